//! Map definitions. Static names match `agent_common::names`, which is what
//! userspace looks them up by.

use agent_common::{
    AgentConfig, ArgvBuf, CidrKey, Counter, EndpointKey, EndpointValue, ExeKey, ExeVerdict,
    PolicyEntry, Redirect, exe_special, limits,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Indexed by destination port: which endpoint maps can hold that port.
/// Almost every connect() on the host is decided by this one array lookup.
#[map]
pub static MG_PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

#[map]
pub static MG_ENDPOINTS: HashMap<EndpointKey, EndpointValue> =
    HashMap::with_max_entries(limits::MAX_ENDPOINTS, 0);

#[map]
pub static MG_CIDRS: LpmTrie<CidrKey, EndpointValue> =
    LpmTrie::with_max_entries(limits::MAX_CIDRS, 0);

#[map]
pub static MG_CGROUP_POLICY: HashMap<u64, PolicyEntry> =
    HashMap::with_max_entries(limits::MAX_CGROUPS, 0);

#[map]
pub static MG_PROC_POLICY: HashMap<u32, PolicyEntry> =
    HashMap::with_max_entries(limits::MAX_PROCS, 0);

#[map]
pub static MG_CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

#[map]
pub static MG_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
pub static MG_EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

/// argv of an execve() in flight, by tgid, until sched_process_exec.
/// LRU: failed execs leave entries that age out on their own.
#[map]
pub static MG_PENDING_ARGV: LruHashMap<u32, ArgvBuf> =
    LruHashMap::with_max_entries(limits::PENDING_ARGV, 0);

/// Per-CPU scratch for building an ArgvBuf: 1 KiB is past the 512-byte stack.
#[map]
pub static MG_ARGV_SCRATCH: PerCpuArray<ArgvBuf> = PerCpuArray::with_max_entries(1, 0);

/// Redirected sockets by cookie: read by sock_ops and getpeername.
#[map]
pub static MG_REDIRECT_COOKIE: LruHashMap<u64, Redirect> =
    LruHashMap::with_max_entries(limits::REDIRECTS, 0);

/// Redirected connections by the client's local port: read by the proxy.
#[map]
pub static MG_REDIRECT_PORT: LruHashMap<u32, Redirect> =
    LruHashMap::with_max_entries(limits::REDIRECTS, 0);

/// CLOCK_BOOTTIME ns of the agent's last heartbeat, for `fail_mode: open`.
#[map]
pub static MG_HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Verdicts of the executable files the agent has vetted, by (dev, inode):
/// the exec hook writes the process's entry from here. LRU: a file that
/// falls out is unvetted until the agent vets it again.
#[map]
pub static MG_EXE_POLICY: LruHashMap<ExeKey, ExeVerdict> =
    LruHashMap::with_max_entries(limits::MAX_EXES, 0);

/// The entries for an unvetted file and for a memfd / deleted file
/// (`exe_special`). An array: these two must never be evicted.
#[map]
pub static MG_EXE_SPECIAL: Array<ExeVerdict> = Array::with_max_entries(exe_special::COUNT, 0);

/// Sizes of the files literal `exe` rules name: an unvetted file of one of
/// these sizes may be a copy (`exe_flags::ANY_SIZE`).
#[map]
pub static MG_EXE_SIZES: HashMap<i64, u32> = HashMap::with_max_entries(limits::MAX_EXE_SIZES, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = MG_COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *slot += 1 };
    }
}
