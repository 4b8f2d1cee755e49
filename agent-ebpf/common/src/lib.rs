//! The ABI between modelgate's kernel programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding and pinned sizes:
//! the kernel writes these bytes and userspace reads them (and the other way
//! round for map values), so one definition serves both sides.
#![no_std]

pub mod dns;
pub mod http;
pub mod sni;
pub mod wildcard;

/// Names of maps and programs, shared so neither side repeats a string.
pub mod names {
    pub const MAP_PORTS: &str = "MG_PORTS";
    pub const MAP_ENDPOINTS: &str = "MG_ENDPOINTS";
    pub const MAP_CIDRS: &str = "MG_CIDRS";
    pub const MAP_CGROUP_POLICY: &str = "MG_CGROUP_POLICY";
    pub const MAP_PROC_POLICY: &str = "MG_PROC_POLICY";
    pub const MAP_CONFIG: &str = "MG_CONFIG";
    pub const MAP_COUNTERS: &str = "MG_COUNTERS";
    pub const MAP_EVENTS: &str = "MG_EVENTS";
    pub const MAP_PENDING_ARGV: &str = "MG_PENDING_ARGV";
    pub const MAP_REDIRECT_COOKIE: &str = "MG_REDIRECT_COOKIE";
    pub const MAP_REDIRECT_PORT: &str = "MG_REDIRECT_PORT";
    pub const MAP_DNS_NAMES: &str = "MG_DNS_NAMES";
    pub const MAP_ARGV_SCRATCH: &str = "MG_ARGV_SCRATCH";
    pub const MAP_HEARTBEAT: &str = "MG_HEARTBEAT";
    pub const MAP_EXE_POLICY: &str = "MG_EXE_POLICY";
    pub const MAP_EXE_SPECIAL: &str = "MG_EXE_SPECIAL";
    pub const MAP_EXE_SIZES: &str = "MG_EXE_SIZES";

    pub const PROG_CONNECT4: &str = "mg_connect4";
    pub const PROG_CONNECT6: &str = "mg_connect6";
    pub const PROG_SENDMSG4: &str = "mg_sendmsg4";
    pub const PROG_SENDMSG6: &str = "mg_sendmsg6";
    pub const PROG_GETPEERNAME4: &str = "mg_getpeername4";
    pub const PROG_GETPEERNAME6: &str = "mg_getpeername6";
    pub const PROG_SOCKOPS: &str = "mg_tcp_connect";
    pub const PROG_DNS: &str = "mg_dns_answers";
    pub const PROG_EGRESS: &str = "mg_first_bytes";
    pub const PROG_EXEC: &str = "mg_sched_exec";
    pub const PROG_EXIT: &str = "mg_sched_exit";
    pub const PROG_FORK: &str = "mg_sched_fork";
    pub const PROG_EXECVE_ARGS: &str = "mg_execve_args";

    /// Globals the agent sets at load time: tracepoint field offsets read
    /// from tracefs, because their layout differs between kernels.
    pub const GLOBAL_EXEC_FILENAME: &str = "MG_EXEC_FILENAME_OFF";
    pub const GLOBAL_EXIT_GROUP_DEAD: &str = "MG_EXIT_GROUP_DEAD_OFF";
    pub const GLOBAL_FORK_PARENT_PID: &str = "MG_FORK_PARENT_PID_OFF";
    pub const GLOBAL_FORK_CHILD_PID: &str = "MG_FORK_CHILD_PID_OFF";
    pub const GLOBAL_EXECVE_ARGV: &str = "MG_EXECVE_ARGV_OFF";
    /// Kernel structure offsets read from the kernel's BTF
    /// (`agent_common::ExeOffsets`): how the exec hook finds the file a
    /// process runs.
    pub const GLOBAL_EXE_OFFSETS: &str = "MG_EXE_OFFSETS";
}

/// Map capacities. Userspace checks its inserts against these so a full map
/// is an error it can report, not a silent miss.
pub mod limits {
    pub const MAX_ENDPOINTS: u32 = 65_536;
    pub const MAX_CIDRS: u32 = 4_096;
    pub const MAX_CGROUPS: u32 = 16_384;
    pub const MAX_PROCS: u32 = 65_536;
    /// Provider ids index `PolicyEntry::actions`; the agent refuses a catalog
    /// with more providers than this, less the [`UNNAMED_PROVIDER`] slot.
    pub const MAX_PROVIDERS: usize = 64;
    /// The slot of a model API the kernel cannot name: first bytes to an
    /// unknown address on a catalog port that it cannot read. Its verdict
    /// is `BLOCK` where the workload's verdict for any provider is
    /// something other than allow or monitor (the agent folds it).
    pub const UNNAMED_PROVIDER: usize = MAX_PROVIDERS - 1;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 22;
    /// Bytes of the exec'd file name carried in an exec event.
    pub const FILENAME_LEN: usize = 256;
    /// Bytes of argv (NUL-separated) carried in an exec event.
    pub const ARGV_LEN: usize = 512;
    /// Arguments copied at most; the rest of a long command line is cut.
    pub const MAX_ARGS: usize = 32;
    /// execve() calls in flight whose argv waits for the exec to succeed.
    pub const PENDING_ARGV: u32 = 1024;
    /// Redirected connections remembered (LRU: the oldest fall out).
    pub const REDIRECTS: u32 = 65_536;
    /// Catalog names (exact and `*.suffix`) the kernel matches in DNS answers.
    pub const DNS_NAMES: u32 = 4_096;
    /// Bytes of a DNS message the kernel reads (and copies to the agent).
    pub const DNS_PAYLOAD: usize = 512;
    /// Longest name matched (dotted form); longer names are left to the agent.
    pub const DNS_NAME_LEN: usize = 128;
    /// Answer records looked at per message.
    pub const DNS_ANSWERS: usize = 8;
    /// Ports recorded per catalog name.
    pub const DNS_PORTS: usize = 4;
    /// Executable files whose verdict the kernel knows at exec (LRU: one
    /// that falls out is simply vetted again).
    pub const MAX_EXES: u32 = 16_384;
    /// Sizes of the files literal `exe` rules name (`MG_EXE_SIZES`).
    pub const MAX_EXE_SIZES: u32 = 1_024;
}

/// Verdicts. `ACTION_NONE` in a policy entry means "no opinion, fall through
/// to the next level" (process → cgroup → default).
pub mod action {
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const MONITOR: u8 = 2;
    pub const BLOCK: u8 = 3;
    /// Rewrite the destination to the local policy proxy. Without a proxy
    /// (port 0 in the config) the kernel treats it as `BLOCK`: a policy can
    /// never silently fail open.
    pub const REDIRECT: u8 = 4;
    /// Through the proxy without decrypting: it reads only the SNI.
    pub const PASSTHROUGH: u8 = 5;
}

/// Which level of the policy produced a verdict.
pub mod source {
    pub const DEFAULT: u8 = 0;
    pub const CGROUP: u8 = 1;
    pub const PROCESS: u8 = 2;
    /// No agent heartbeat for `fail_open_after_s` under `fail_mode: open`:
    /// the kernel only monitors.
    pub const FAIL_OPEN: u8 = 3;
}

/// `MG_CGROUP_POLICY` key of the entry that applies to every cgroup without
/// one of its own (no real cgroup has id 0).
pub const GLOBAL_POLICY_KEY: u64 = 0;

/// Rule id meaning "the policy's default action".
pub const RULE_DEFAULT: u16 = u16::MAX;

/// `MG_PORTS` flags: which maps may hold an endpoint on this port. Most
/// connects are decided by this one array lookup.
pub mod port_flags {
    pub const EXACT: u8 = 1;
    pub const CIDR: u8 = 2;
}

/// Per-CPU counters in `MG_COUNTERS`; indices are stable (never reused).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect()/sendmsg() calls whose destination was a catalog endpoint.
    EndpointHits = 0,
    Allowed = 1,
    Monitored = 2,
    Blocked = 3,
    Redirected = 4,
    /// Ring-buffer reservations that failed: each one is a lost event, of
    /// any kind (exec and exit events come from the whole host).
    EventsLost = 5,
    /// UDP sends to an endpoint (QUIC / HTTP/3 attempts).
    UdpHits = 6,
    ExecEvents = 7,
    /// A policy entry named a provider id past `MAX_PROVIDERS`.
    BadProvider = 8,
    /// The agent's own connections to endpoints (the proxy's upstream
    /// side), let through unredirected.
    AgentOwn = 9,
    /// DNS answers for a catalog name seen by the kernel.
    DnsMatches = 10,
    /// A/AAAA records the kernel put in the endpoint map from DNS answers.
    DnsLearned = 11,
    /// ClientHellos to unknown addresses dropped because their SNI named a
    /// provider this workload may not reach.
    SniBlocked = 12,
    /// Verdicts turned into monitor because the agent stopped heartbeating
    /// under `fail_mode: open`.
    FailOpen = 13,
    /// Of `EventsLost`, the connect decisions: connects to an endpoint
    /// that were decided but have no event record.
    ConnectEventsLost = 14,
    /// First bytes to an unknown address on a catalog port held back (a
    /// segment dropped) because the kernel could not judge them and the
    /// workload's verdict is strict.
    FirstFlightHeld = 15,
    /// Execs of a file the agent had not vetted (new, changed or evicted)
    /// while exe rules exist: the conservative `unvetted` entry applied.
    ExecUnvetted = 16,
    /// Execs of a memfd or deleted file while exe rules exist.
    ExecAnonymous = 17,
    /// Exec-time verdicts that could not be written (MG_PROC_POLICY full)
    /// or exe identities that could not be read.
    ExecVerdictLost = 18,
}

impl Counter {
    pub const COUNT: u32 = 19;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::EndpointHits,
        Counter::Allowed,
        Counter::Monitored,
        Counter::Blocked,
        Counter::Redirected,
        Counter::EventsLost,
        Counter::UdpHits,
        Counter::ExecEvents,
        Counter::BadProvider,
        Counter::AgentOwn,
        Counter::DnsMatches,
        Counter::DnsLearned,
        Counter::SniBlocked,
        Counter::FailOpen,
        Counter::ConnectEventsLost,
        Counter::FirstFlightHeld,
        Counter::ExecUnvetted,
        Counter::ExecAnonymous,
        Counter::ExecVerdictLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::EndpointHits => "endpoint_hits",
            Counter::Allowed => "allowed",
            Counter::Monitored => "monitored",
            Counter::Blocked => "blocked",
            Counter::Redirected => "redirected",
            Counter::EventsLost => "events_lost",
            Counter::UdpHits => "udp_hits",
            Counter::ExecEvents => "exec_events",
            Counter::BadProvider => "bad_provider",
            Counter::AgentOwn => "agent_own",
            Counter::DnsMatches => "dns_matches",
            Counter::DnsLearned => "dns_learned",
            Counter::SniBlocked => "sni_blocked",
            Counter::FailOpen => "fail_open",
            Counter::ConnectEventsLost => "connect_events_lost",
            Counter::FirstFlightHeld => "first_flight_held",
            Counter::ExecUnvetted => "exec_unvetted",
            Counter::ExecAnonymous => "exec_anonymous",
            Counter::ExecVerdictLost => "exec_verdict_lost",
        }
    }
}

/// Key of `MG_ENDPOINTS`: an address in IPv6 form (IPv4 as `::ffff:a.b.c.d`,
/// which is also how connect6 sees v4-mapped destinations) and a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);

/// Data of the `MG_CIDRS` LPM-trie key. The port comes first so that it is
/// always fully matched: prefix length = 16 + the address prefix (IPv4
/// prefixes are offset by 96 for the `::ffff:0:0/96` mapping).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CidrKey {
    /// Network byte order, so the trie compares it bit by bit from the top.
    pub port_be: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<CidrKey>() == 18);

pub const CIDR_PORT_BITS: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointValue {
    /// Index into the agent's provider registry (< MAX_PROVIDERS).
    pub provider: u32,
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointValue>() == 8);

/// Value of `MG_CGROUP_POLICY` (by cgroup id) and `MG_PROC_POLICY` (by tgid):
/// the action and the deciding rule per provider id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub actions: [u8; limits::MAX_PROVIDERS],
    pub rules: [u16; limits::MAX_PROVIDERS],
}
const _: () = assert!(core::mem::size_of::<PolicyEntry>() == 192);

impl PolicyEntry {
    pub const EMPTY: PolicyEntry = PolicyEntry {
        actions: [action::NONE; limits::MAX_PROVIDERS],
        rules: [RULE_DEFAULT; limits::MAX_PROVIDERS],
    };
}

/// The single element of `MG_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub default_action: u8,
    /// 1 when some policy rule depends on the process (exe, comm, user):
    /// only then is `MG_PROC_POLICY` consulted.
    pub has_proc_rules: u8,
    /// Bit `k` set when some catalog `*.suffix` has `k + 1` labels: the
    /// suffix lengths worth looking up (`wildcard::below_suffix`).
    pub suffix_labels: u8,
    /// 1 when some rule names an executable (`exe`, `exe_sha256`,
    /// `anonymous_exec`): the exec hook then writes the new program's
    /// verdict itself (`MG_EXE_POLICY`, `MG_EXE_SPECIAL`).
    pub exe_rules: u8,
    /// Bumped on every policy load, echoed in events.
    pub generation: u32,
    /// The proxy's port on 127.0.0.1 and ::1 (host order); 0 = no proxy.
    pub proxy_port: u16,
    /// `fail_mode: open`: seconds without an agent heartbeat
    /// (`MG_HEARTBEAT`) after which verdicts become monitor. 0: fail
    /// closed, the programs keep enforcing the last policy.
    pub fail_open_after_s: u16,
    /// The agent's tgid: its own sockets (the proxy's upstream connections)
    /// are never redirected, or the proxy would loop into itself.
    pub agent_tgid: u32,
}
const _: () = assert!(core::mem::size_of::<AgentConfig>() == 16);

/// A redirected connection: where it was going and who made it. Stored by
/// socket cookie at connect(), copied under the client's local port once
/// TCP picks it (sock_ops), where the proxy finds it from accept()'s peer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Redirect {
    /// Original destination, IPv6 form (IPv4 mapped).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// `action::REDIRECT` or `action::PASSTHROUGH`.
    pub action: u8,
    pub _pad: u8,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub provider: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub rule: u16,
    pub _pad2: u16,
    pub generation: u32,
    pub boot_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Redirect>() == 80);

/// `MG_REDIRECT_PORT` key: the client's local port, plus this bit when the
/// client reached the proxy over IPv6 (its v4 and v6 ports are separate).
pub const REDIRECT_KEY_V6: u32 = 1 << 16;

/// Event kinds; ids are stable and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Connect = 1,
    Exec = 2,
    Exit = 3,
    Dns = 4,
    /// The first bytes of a TLS ClientHello or an HTTP CONNECT.
    Egress = 5,
}

pub mod egress_kind {
    pub const CLIENT_HELLO: u32 = 1;
    pub const HTTP_CONNECT: u32 = 2;
    /// The first bytes sent to an unknown address on a catalog port that
    /// the kernel could not judge (a hello split across writes or cut
    /// short, past the parser's bounds, not TLS): dropped where the
    /// workload's verdict is strict (`dropped`), else passed.
    pub const UNREADABLE: u32 = 3;
    /// A cleartext HTTP request to an unknown address on a catalog port:
    /// the agent reads its Host as it reads a hello's SNI.
    pub const HTTP_REQUEST: u32 = 4;
}

/// Bytes of a ClientHello / CONNECT request copied to the agent.
pub const EGRESS_BYTES: usize = 1024;

/// A TLS ClientHello (or a cleartext `CONNECT`) leaving a governed cgroup
/// for an address that is not a known endpoint: the agent reads the SNI
/// (or the CONNECT target) and learns the address if it names a model API.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EgressEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// Destination, IPv6 form (IPv4 mapped).
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
    pub kind: u32,
    pub len: u32,
    /// Length of `name`, the server name the kernel read
    /// (`sni::server_name`); 0 when it read none. With it, a hello whose
    /// server_name lies past the copied bytes (after a 1.2 KB post-quantum
    /// key share) is still named to the agent.
    pub name_len: u32,
    pub name: [u8; limits::DNS_NAME_LEN],
    pub payload: [u8; EGRESS_BYTES],
}
const _: () = assert!(core::mem::size_of::<EgressEvent>() == 1240);

/// `MG_DNS_NAMES` flags.
pub mod dns_flags {
    /// The key is the hash of a whole name (DNS wire form).
    pub const EXACT: u32 = 1;
    /// The key is the hash of a suffix: any name below it matches.
    pub const SUFFIX: u32 = 2;
    /// The same two, for names in dotted form (a TLS SNI).
    pub const SNI_EXACT: u32 = 4;
    pub const SNI_SUFFIX: u32 = 8;
}

/// `name_hash`'s sum over the bytes of a dotted name as they are (the SNI
/// form), lowercased. Same arithmetic, so the kernel's `hash_from` serves
/// both.
pub fn dotted_hash(dotted: &[u8]) -> u64 {
    let (mut hash, mut power) = (0u64, 1u64);
    for byte in dotted {
        hash = hash.wrapping_add((byte.to_ascii_lowercase() as u64).wrapping_mul(power));
        power = power.wrapping_mul(FNV_PRIME);
    }
    hash ^ FNV_OFFSET
}

/// Value of `MG_DNS_NAMES`, keyed by `name_hash` of a catalog name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsName {
    pub provider: u32,
    pub flags: u32,
    /// The provider's ports; unused slots repeat one (never 0).
    pub ports: [u16; limits::DNS_PORTS],
}
const _: () = assert!(core::mem::size_of::<DnsName>() == 16);

/// A DNS answer for a catalog name, as received: the agent parses it for
/// TTLs and keeps the map in step.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    pub provider: u32,
    /// Bytes of `payload` that are valid.
    pub len: u32,
    /// Reserved (0).
    pub learned: u32,
    pub _pad: u32,
    pub payload: [u8; limits::DNS_PAYLOAD],
}
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 560);

/// The hash of a catalog name in DNS wire form (length-prefixed labels,
/// no root byte), lowercased: `Σ bᵢ·Pⁱ` (wrapping), xored with an offset.
/// A positional sum rather than FNV so the kernel can compute it, and the
/// hash of a suffix, in one pass without branches (trailing zero bytes add
/// nothing). Kernel and agent must agree on it bit for bit.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// `name_hash(b"api.openai.com")` hashes `\x03api\x06openai\x03com`.
pub fn name_hash(dotted: &[u8]) -> u64 {
    let (mut hash, mut power) = (0u64, 1u64);
    let mut mix = |byte: u8| {
        hash = hash.wrapping_add((byte.to_ascii_lowercase() as u64).wrapping_mul(power));
        power = power.wrapping_mul(FNV_PRIME);
    };
    for label in dotted.split(|b| *b == b'.') {
        mix(label.len() as u8);
        label.iter().for_each(|b| mix(*b));
    }
    hash ^ FNV_OFFSET
}

/// Common first bytes of every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub tgid: u32,
    pub pid: u32,
    pub _pad: u32,
    /// bpf_ktime_get_boot_ns().
    pub boot_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);

pub mod hook {
    pub const CONNECT: u8 = 1;
    pub const SENDMSG: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// Destination in IPv6 form (IPv4 mapped).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// AF_INET or AF_INET6: the family of the socket, not of the address.
    pub family: u16,
    /// IPPROTO_TCP / IPPROTO_UDP.
    pub protocol: u8,
    pub action: u8,
    pub source: u8,
    pub hook: u8,
    pub provider: u32,
    pub rule: u16,
    pub _pad: u16,
    pub generation: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 96);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// Bytes of `filename` that are valid (without the NUL).
    pub filename_len: u32,
    pub _pad: u32,
    pub filename: [u8; limits::FILENAME_LEN],
    /// Bytes of `argv` that are valid: NUL-separated arguments as the
    /// process passed them to execve(), cut at `ARGV_LEN`.
    pub argv_len: u32,
    pub _pad2: u32,
    pub argv: [u8; limits::ARGV_LEN],
    /// The file the process now runs, as the kernel saw it at exec
    /// (zero when the exe offsets are unknown): the agent vets this very
    /// file, not whatever the path names by the time it looks.
    pub exe: ExeFile,
    /// What the exec hook did (`exe_status`).
    pub exe_status: u32,
    pub _pad3: u32,
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 888);

/// The identity of an executable file: which inode, and which version of
/// it (ctime moves on every write, chmod, link or utime; size too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeFile {
    /// The kernel's `s_dev` (major << 20 | minor), not stat's encoding.
    pub dev: u32,
    /// 0: a memfd or a file deleted since (nothing names it any more).
    pub nlink: u32,
    pub ino: u64,
    pub ctime_sec: i64,
    /// Without the multigrain "queried" flag bit.
    pub ctime_nsec: u32,
    pub _pad: u32,
    pub size: i64,
}
const _: () = assert!(core::mem::size_of::<ExeFile>() == 40);

/// Key of `MG_EXE_POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<ExeKey>() == 16);

/// Value of `MG_EXE_POLICY` (by file) and `MG_EXE_SPECIAL` (by
/// `exe_special`): what the process gets at exec, before it runs an
/// instruction of the new program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExeVerdict {
    /// `exe_flags`.
    pub flags: u32,
    /// ctime nsec of the vetted version (see `ExeFile`).
    pub ctime_nsec: u32,
    pub ctime_sec: i64,
    pub size: i64,
    pub entry: PolicyEntry,
}
const _: () = assert!(core::mem::size_of::<ExeVerdict>() == 216);

pub mod exe_flags {
    /// `entry` holds a verdict for some provider: write it as the
    /// process's entry. Without it the process has none of its own.
    pub const HAS_ENTRY: u32 = 1;
    /// The agent must look first (a dynamic loader run directly: the
    /// program is in its argv): the `UNVETTED` entry applies meanwhile.
    pub const DEFER: u32 = 2;
    /// On the `UNVETTED` entry: it applies to an unvetted file of any
    /// size. Without it, only to files whose size is in `MG_EXE_SIZES`
    /// (a copy of a file a rule names has its size; other new programs
    /// are left to the cgroup level until vetted).
    pub const ANY_SIZE: u32 = 4;
}

/// Slots of `MG_EXE_SPECIAL`.
pub mod exe_special {
    /// A file the agent has not vetted (or whose version changed).
    pub const UNVETTED: u32 = 0;
    /// A memfd or deleted file.
    pub const ANONYMOUS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// `ExecEvent::exe_status`: what the exec hook wrote.
pub mod exe_status {
    /// No exe rules (or no offsets): the entry was cleared, as before.
    pub const CLEARED: u32 = 0;
    /// A vetted file: its verdict (or none) applied.
    pub const VETTED: u32 = 1;
    pub const UNVETTED: u32 = 2;
    pub const ANONYMOUS: u32 = 3;
    /// A vetted dynamic loader run directly: unvetted until the agent reads argv.
    pub const DEFERRED: u32 = 4;
}

/// Byte offsets of the kernel fields the exec hook reads, from the running
/// kernel's BTF. `task_mm == 0`: unknown, the hook only clears.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeOffsets {
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_sb: u32,
    pub inode_ino: u32,
    pub inode_nlink: u32,
    pub inode_size: u32,
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    pub sb_dev: u32,
}
const _: () = assert!(core::mem::size_of::<ExeOffsets>() == 40);

/// argv copied at sys_enter_execve, kept until the exec succeeds. Twice
/// `ARGV_LEN` so each string read can be given a full `ARGV_LEN` window
/// from any start offset below `ARGV_LEN` (what the verifier can prove).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArgvBuf {
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; 2 * limits::ARGV_LEN],
}
const _: () = assert!(core::mem::size_of::<ArgvBuf>() == 1032);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are repr(C), contain only integers and byte arrays,
    // and have no implicit padding (explicit `_pad` fields, sizes asserted).
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for PolicyEntry {}
    unsafe impl aya::Pod for AgentConfig {}
    unsafe impl aya::Pod for Redirect {}
    unsafe impl aya::Pod for DnsName {}
    unsafe impl aya::Pod for ExeKey {}
    unsafe impl aya::Pod for ExeVerdict {}
    unsafe impl aya::Pod for ExeOffsets {}
}

/// An address as the 16 bytes every key holds (IPv4 as `::ffff:a.b.c.d`).
pub const fn to_v6_bytes(addr: core::net::IpAddr) -> [u8; 16] {
    match addr {
        core::net::IpAddr::V4(v4) => v4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a key holds, IPv4 again when it is a mapped one.
pub const fn from_v6_bytes(bytes: [u8; 16]) -> core::net::IpAddr {
    let v6 = core::net::Ipv6Addr::from_octets(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => core::net::IpAddr::V4(v4),
        None => core::net::IpAddr::V6(v6),
    }
}

/// IPv4 `a.b.c.d` as the `::ffff:a.b.c.d` bytes used in every key.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(test)]
mod tests {
    use core::net::IpAddr;

    use super::*;

    #[test]
    fn addresses_round_trip_through_the_key_form() {
        let v4: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(to_v6_bytes(v4), v4_mapped([127, 0, 0, 9]));
        assert_eq!(from_v6_bytes(to_v6_bytes(v4)), v4);
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(from_v6_bytes(to_v6_bytes(v6)), v6);
    }
}
