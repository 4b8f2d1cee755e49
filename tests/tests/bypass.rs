//! Bypass detection: addresses learned from DNS answers, wildcards too.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use modelgate_tests::{
    Agent, AgentSpec, TestCgroup, answer_any_byte, output, require_root, send_parts,
    standin::{ModelServer, Pki},
};

/// dnsmasq on `bind`:53, answering each of `names` from a hosts file,
/// each with its own loopback address, as a real resolver encodes answers.
struct DnsServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    fn start(bind: &str, names: &[String]) -> DnsServer {
        let dir = tempfile::tempdir().unwrap();
        let hosts: String = names
            .iter()
            .enumerate()
            .map(|(n, name)| format!("127.10.{}.{} {name}\n", n / 250, n % 250 + 1))
            .collect();
        fs::write(dir.path().join("hosts"), hosts).unwrap();
        let log = dir.path().join("log");
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--port=53",
                "--local-ttl=300",
                "--user=root",
                "--pid-file",
            ])
            .arg(format!("--listen-address={bind}"))
            .arg(format!(
                "--addn-hosts={}",
                dir.path().join("hosts").display()
            ))
            .arg(format!("--log-facility={}", log.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("start dnsmasq (apt-get install dnsmasq-base)");
        let mut server = DnsServer { child, _dir: dir };
        // It logs the hosts file read after its sockets are bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = format!(" - {} names", names.len());
        while !fs::read_to_string(&log).is_ok_and(|l| l.contains(&ready)) {
            let exited = server.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dnsmasq did not start on {bind}:53 ({exited:?}): {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resolve each fresh name of argv and connect to its fresh address at
/// once; prints how each connect ended.
const RESOLVE_AND_CONNECT: &str = r#"
import errno, json, socket, sys
counts = {}
for name in sys.argv[1:]:
    try:
        addr = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as e:
        counts["resolve-failed"] = counts.get("resolve-failed", 0) + 1
        continue
    s = socket.socket()
    try:
        s.connect((addr, 443))
        result = "connected"
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
    counts[result] = counts.get(result, 0) + 1
print(json.dumps(counts))
"#;

#[test]
fn wildcard_hosts_are_learned_from_dns_and_the_next_connect_is_caught() {
    require_root();
    let cgroup = TestCgroup::new("dns");
    let tries = 1000;
    // One label below the wildcard, and several (the kernel once stripped
    // only one, so `r1.x.y.openai.azure.com` went unlearned).
    let names: Vec<String> = (0..tries)
        .map(|i| match i % 3 {
            0 => format!("r{i}.openai.azure.com"),
            1 => format!("r{i}.x.openai.azure.com"),
            _ => format!("r{i}.x.y.z.w.openai.azure.com"),
        })
        .collect();
    let _dns = DnsServer::start("127.0.2.53", &names);
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        "providers:\n  - name: azure-openai\n    api: azure-openai\n    hosts: [\"*.openai.azure.com\"]\n",
        "default_action: block\nrules: []\n",
    ));
    // The client's resolver is the stand-in, through a private resolv.conf.
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 127.0.2.53\noptions attempts:2 timeout:1\n",
    )
    .unwrap();
    let mut cmd = cgroup.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(&resolv)
        .args(["python3", "-c", RESOLVE_AND_CONNECT])
        .args(&names);
    let out = output(&mut cmd);
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{tries} resolve-then-connect tries: {counts}");
    assert_eq!(
        counts["EPERM"], tries,
        "every connect right after its DNS answer must be caught: {counts}"
    );
    // The decision records carry the learned name.
    let record = agent.wait_for_event("a learned address", |e| {
        e["destination"]["host"]
            .as_str()
            .is_some_and(|h| h.ends_with(".openai.azure.com"))
    });
    assert_eq!(record["action"], "block", "{record:#}");
    assert_eq!(record["gen_ai.provider.name"], "azure-openai", "{record:#}");
}

fn wait_for_alert(agent: &Agent, kind: &str, timeout: Duration) -> serde_json::Value {
    agent.wait_for_alert_where(kind, timeout, |_| true)
}

const ENDPOINT: &str =
    "providers:\n  - name: openai\n    api: openai\n    ports: [443]\n    addresses: [127.0.0.9]\n";

#[test]
fn quic_to_an_endpoint_raises_an_alert() {
    require_root();
    let cgroup = TestCgroup::new("quic-alert");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        ENDPOINT,
        "default_action: redirect\nrules: []\n",
    ));
    let script = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n  s.sendto(b'q', ('127.0.0.9', 443))\nexcept OSError:\n  pass";
    output(cgroup.command("python3").args(["-c", script]));
    let alert = wait_for_alert(&agent, "quic-attempt", Duration::from_secs(10));
    assert_eq!(alert["gen_ai.provider.name"], "openai", "{alert:#}");
    assert!(
        alert["identity"]["exe"]
            .as_str()
            .unwrap_or("")
            .contains("python"),
        "{alert:#}"
    );
    assert_eq!(alert["destination"]["port"], 443, "{alert:#}");
}

#[test]
fn a_stop_and_restart_raises_an_enforcement_gap_with_both_times() {
    require_root();
    let cgroup = TestCgroup::new("gap");
    let mut agent = Agent::start(AgentSpec::new(
        &cgroup,
        ENDPOINT,
        "default_action: monitor\nrules: []\n",
    ));
    agent.stop();
    std::thread::sleep(Duration::from_millis(1200));
    agent.restart();
    let alert = wait_for_alert(&agent, "enforcement-gap", Duration::from_secs(10));
    assert!(
        alert["stopped_at"].is_string() && alert["started_at"].is_string(),
        "{alert:#}"
    );
    assert!(
        alert["gap_seconds"].as_f64().unwrap_or(0.0) >= 1.0,
        "{alert:#}"
    );
    assert_eq!(alert["clean_stop"], true, "{alert:#}");
}

#[test]
fn detaching_the_agents_program_by_hand_raises_agent_tamper() {
    require_root();
    assert!(
        Command::new("bpftool")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "bpftool is needed to detach a program by hand: apt-get install -y bpftool"
    );
    let cgroup = TestCgroup::new("tamper");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        ENDPOINT,
        "default_action: block\nrules: []\n",
    ));
    let cgroup_id = std::fs::metadata(&cgroup.path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(
        &output(Command::new("bpftool").args(["-j", "link", "show"])).stdout,
    )
    .expect("bpftool link show -j");
    let ours = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["cgroup_id"] == cgroup_id && l["attach_type"] == "cgroup_inet4_connect")
        .unwrap_or_else(|| panic!("no connect4 link on cgroup {cgroup_id}: {links:#}"));
    let id = ours["id"].to_string();
    let out = output(Command::new("bpftool").args(["link", "detach", "id", &id]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alert = wait_for_alert(&agent, "agent-tamper", Duration::from_secs(15));
    assert_eq!(alert["severity"], "critical", "{alert:#}");
    assert!(
        alert["programs"].to_string().contains("mg_connect4"),
        "{alert:#}"
    );
}

/// A TLS client: prints `handshake done`, `timeout` or the errno. A fifth
/// argument pads its ClientHello to about that many bytes (with ALPN
/// names), as post-quantum key shares make real ones 1.5–2 KB.
const TLS_CLIENT: &str = r#"
import errno, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[4])
if len(sys.argv) > 5:
    ctx.set_alpn_protocols(["x" * 200] * (int(sys.argv[5]) // 200) + ["http/1.1"])
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
    sys.exit(0)
try:
    ctx.wrap_socket(s, server_hostname=sys.argv[3])
    print("handshake done")
except socket.timeout:
    print("timeout")
except Exception as e:
    print("error", e)
"#;

fn tls_client(cgroup: &TestCgroup, ip: &str, ca: &Path) -> String {
    tls_client_as(cgroup, ip, "api.openai.com", ca)
}

/// With `name` as the SNI, exactly as written (Python sends case and a
/// trailing dot as given).
fn tls_client_as(cgroup: &TestCgroup, ip: &str, name: &str, ca: &Path) -> String {
    tls_client_padded(cgroup, ip, name, ca, 0)
}

fn tls_client_padded(cgroup: &TestCgroup, ip: &str, name: &str, ca: &Path, pad: usize) -> String {
    let mut cmd = cgroup.command("python3");
    cmd.args(["-c", TLS_CLIENT, ip, "443", name]).arg(ca);
    if pad > 0 {
        cmd.arg(pad.to_string());
    }
    String::from_utf8_lossy(&output(&mut cmd).stdout)
        .trim()
        .to_string()
}

/// api.openai.com, known at 127.0.0.9 only.
const OPENAI_AT_9: &str = "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n    addresses: [127.0.0.9]\n";

/// A ClientHello built by hand whose server_name follows 1,200 bytes of
/// another extension (where a post-quantum key share put first would
/// be), sent to a listener of its own on `argv[1]`:443.
const LATE_NAME_HELLO: &str = r#"
import socket, struct, sys, time
def ext(kind, data):
    return struct.pack("!HH", kind, len(data)) + data
name = b"api.openai.com"
exts = ext(21, bytes(1200)) + ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
body += struct.pack("!H", len(exts)) + exts
hs = b"\x01" + len(body).to_bytes(3, "big") + body
record = b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
srv = socket.socket()
srv.bind((sys.argv[1], 443))
srv.listen()
c = socket.create_connection((sys.argv[1], 443))
c.sendall(record)
time.sleep(0.2)
print("sent", len(record))
"#;

#[test]
fn a_hello_whose_name_lies_past_the_bytes_copied_to_the_agent_is_still_reported() {
    require_root();
    let cgroup = TestCgroup::new("sni-late");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        OPENAI_AT_9,
        "default_action: monitor\nrules: []\n",
    ));
    let out = output(
        cgroup
            .command("python3")
            .args(["-c", LATE_NAME_HELLO, "127.0.0.93"]),
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with("sent 1"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alert = wait_for_alert(&agent, "unknown-address", Duration::from_secs(10));
    assert_eq!(alert["host"], "api.openai.com", "{alert:#}");
    assert_eq!(alert["destination"]["ip"], "127.0.0.93", "{alert:#}");
}

#[test]
fn a_client_hello_for_a_catalog_host_on_an_unknown_address_is_reported_and_under_block_never_completes()
 {
    require_root();
    let pki = Pki::new(&["api.openai.com"]);
    let _server = ModelServer::start(&pki, "127.0.0.99", 443, 1, 0.0);
    let catalog = OPENAI_AT_9;

    // Under monitor: the handshake completes, is reported, the address learned.
    let cgroup = TestCgroup::new("sni-monitor");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        catalog,
        "default_action: monitor\nrules: []\n",
    ));
    assert_eq!(tls_client(&cgroup, "127.0.0.99", &pki.ca), "handshake done");
    let alert = wait_for_alert(&agent, "unknown-address", Duration::from_secs(10));
    assert_eq!(alert["host"], "api.openai.com", "{alert:#}");
    assert_eq!(alert["destination"]["ip"], "127.0.0.99", "{alert:#}");
    assert!(
        alert["identity"]["exe"]
            .as_str()
            .unwrap_or("")
            .contains("python"),
        "{alert:#}"
    );
    assert_eq!(tls_client(&cgroup, "127.0.0.99", &pki.ca), "handshake done");
    let record = agent.wait_for_event("the learned address at connect()", |e| {
        e["destination"]["ip"] == "127.0.0.99"
    });
    assert_eq!(
        record["action"], "monitor",
        "the next connect meets the policy: {record:#}"
    );
    drop(agent);

    // Under block: the hello is dropped in the kernel; it never completes.
    let cgroup = TestCgroup::new("sni-block");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        catalog,
        "default_action: block\nrules: []\n",
    ));
    let result = tls_client(&cgroup, "127.0.0.99", &pki.ca);
    let mut agent = agent;
    assert_eq!(
        result,
        "timeout",
        "the handshake must not complete; agent log:\n{}",
        agent.stop()
    );
    let alert = wait_for_alert(&agent, "unknown-address", Duration::from_secs(10));
    assert_eq!(alert["host"], "api.openai.com", "{alert:#}");
    // The name as servers read it: case and a trailing dot do not matter.
    let _other = ModelServer::start(&pki, "127.0.0.96", 443, 1, 0.0);
    assert_eq!(
        tls_client_as(&cgroup, "127.0.0.96", "API.OpenAI.com.", &pki.ca),
        "timeout",
        "a trailing dot must not get a hello past the kernel"
    );
    // Nor size: a hello longer than a full-size segment is a hello still.
    let _large = ModelServer::start(&pki, "127.0.0.95", 443, 1, 0.0);
    assert_eq!(
        tls_client_padded(&cgroup, "127.0.0.95", "api.openai.com", &pki.ca, 2000),
        "timeout",
        "a 2 KB hello must not get past the kernel"
    );
    // And from then on the address is an endpoint: connect() is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_client(&cgroup, "127.0.0.99", &pki.ca) != "EPERM" {
        assert!(Instant::now() < deadline, "the address was not learned");
    }
}

#[test]
fn a_name_several_labels_below_a_wildcard_is_dropped_on_its_first_connection() {
    require_root();
    let names = ["a.b.openai.azure.com", "w.x.y.z.openai.azure.com"];
    let pki = Pki::new(&names);
    let cgroup = TestCgroup::new("sni-deep");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        "providers:\n  - name: azure-openai\n    api: azure-openai\n    hosts: [\"*.openai.azure.com\"]\n",
        "default_action: block\nrules: []\n",
    ));
    for (name, ip) in names.iter().zip(["127.0.0.86", "127.0.0.87"]) {
        let _server = ModelServer::start(&pki, ip, 443, 1, 0.0);
        // Never resolved, so never learned: only the hello names it.
        assert_eq!(
            tls_client_as(&cgroup, ip, name, &pki.ca),
            "timeout",
            "the first hello for {name} must be dropped"
        );
        let alert = agent.wait_for_alert_where("unknown-address", Duration::from_secs(10), |a| {
            a["host"] == *name
        });
        assert_eq!(alert["destination"]["ip"], ip, "{alert:#}");
    }
    // A name beside the wildcard, not below it, goes through.
    let pki = Pki::new(&["openai.azure.com.example"]);
    let _server = ModelServer::start(&pki, "127.0.0.88", 443, 1, 0.0);
    assert_eq!(
        tls_client_as(&cgroup, "127.0.0.88", "openai.azure.com.example", &pki.ca),
        "handshake done"
    );
}

/// A real ClientHello for argv[1] from Python's TLS stack, in hex.
const CLIENT_HELLO: &str = r#"
import ssl, sys
ctx = ssl.create_default_context()
out = ssl.MemoryBIO()
obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sys.argv[1])
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
print(out.read().hex())
"#;

/// A hello for api.openai.com sent to `ip`:443 in two writes split at each
/// of `offsets`, all at once; then `GET /` for it in cleartext on one more
/// connection. Per try: whether the server read it within 6 s.
fn split_hellos(
    cgroup: &TestCgroup,
    ip: &str,
    offsets: &[usize],
) -> serde_json::Map<String, serde_json::Value> {
    let out = output(Command::new("python3").args(["-c", CLIENT_HELLO, "api.openai.com"]));
    let hex = String::from_utf8_lossy(&out.stdout);
    let hello: Vec<u8> = (0..hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("a hex hello"))
        .collect();
    assert!(hello.len() > 64, "a ClientHello: {hex}");
    let mut cases: Vec<(String, Vec<Vec<u8>>)> = offsets
        .iter()
        .map(|&k| {
            (
                k.to_string(),
                vec![hello[..k].to_vec(), hello[k..].to_vec()],
            )
        })
        .collect();
    cases.push((
        "cleartext".into(),
        vec![b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n".to_vec()],
    ));
    send_parts(cgroup, ip, 443, &cases)
}

#[test]
fn a_client_hello_split_across_writes_is_held_back_under_block_and_reported() {
    require_root();
    answer_any_byte("127.0.0.84:443");
    // 3 bytes then the rest, and every split in the first 64 bytes.
    let offsets: Vec<usize> = (1..=64).collect();

    // Under monitor nothing is held back: a client that splits its hello
    // is slowed by nothing.
    let cgroup = TestCgroup::new("split-monitor");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        OPENAI_AT_9,
        "default_action: monitor\nrules: []\n",
    ));
    let seen = split_hellos(&cgroup, "127.0.0.84", &[3, 40]);
    for (label, result) in &seen {
        assert_eq!(result, "reached", "{label}: {seen:?}");
    }
    drop(agent);

    let cgroup = TestCgroup::new("split-block");
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        OPENAI_AT_9,
        "default_action: block\nrules: []\n",
    ));
    let results = split_hellos(&cgroup, "127.0.0.84", &offsets);
    assert_eq!(results.len(), offsets.len() + 1, "{results:?}");
    for (label, result) in &results {
        assert!(
            result == "timeout" || result == "EPERM",
            "split at {label} must not reach the server: {results:?}"
        );
    }
    // TCP sends the start again joined to the rest: then the whole hello
    // is read, its name known, the address learned and reported.
    let alert = wait_for_alert(&agent, "unknown-address", Duration::from_secs(10));
    assert_eq!(alert["host"], "api.openai.com", "{alert:#}");
    assert_eq!(alert["destination"]["ip"], "127.0.0.84", "{alert:#}");
    let held = wait_for_alert(&agent, "unreadable-first-bytes", Duration::from_secs(10));
    assert_eq!(held["destination"]["ip"], "127.0.0.84", "{held:#}");
    assert!(
        held["identity"]["exe"]
            .as_str()
            .unwrap_or("")
            .contains("python"),
        "{held:#}"
    );
}

#[test]
fn connect_through_an_http_proxy_to_a_model_api_is_reported() {
    require_root();
    let cgroup = TestCgroup::new("proxyconnect");
    let proxy = std::net::TcpListener::bind("127.0.0.98:0").unwrap();
    let port = proxy.local_addr().unwrap().port();
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        ENDPOINT,
        "default_action: monitor\nrules: []\n",
    ));
    let hosts = "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n";
    std::fs::write(agent.policies_dir().join("endpoints.yaml"), hosts).unwrap();
    let mut agent = agent;
    agent.wait_for_log("policy reloaded", Duration::from_secs(10));
    let script = format!(
        "import socket\ns=socket.create_connection(('127.0.0.98', {port}))\ns.sendall(b'CONNECT api.openai.com:443 HTTP/1.1\\r\\nHost: api.openai.com:443\\r\\n\\r\\n')\nprint('sent')"
    );
    let out = output(cgroup.command("python3").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent");
    let alert = wait_for_alert(&agent, "proxy-connect", Duration::from_secs(10));
    assert_eq!(alert["host"], "api.openai.com", "{alert:#}");
    assert_eq!(alert["destination"]["port"], port, "{alert:#}");
    drop(proxy);
}

/// Alerts raised while the webhook receiver is down — across an agent
/// restart — all arrive once it is back: each id exactly once per
/// (count, last_seen), every signature valid.
#[test]
fn webhook_alerts_survive_a_receiver_outage_and_an_agent_restart() {
    require_root();
    let cgroup = TestCgroup::new("webhook");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    fs::write(&secret, "test-webhook-secret\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "alerts:\n  fold_window: 1s\n  webhooks:\n    - url: http://127.0.0.1:{port}/hook\n      secret_file: {}\n",
        secret.display()
    );
    let mut spec = AgentSpec::new(&cgroup, ENDPOINT, "default_action: block\nrules: []\n");
    spec.config = &config;
    let outage = Instant::now();
    let mut agent = Agent::start(spec);

    // Alerts while nobody listens: a QUIC attempt and an invalid policy.
    let quic = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n  s.sendto(b'q', ('127.0.0.9', 443))\nexcept OSError:\n  pass";
    output(cgroup.command("python3").args(["-c", quic]));
    fs::write(
        agent.policies_dir().join("policy.yaml"),
        "default_action: explode\n",
    )
    .unwrap();
    wait_for_alert(&agent, "policy-invalid", Duration::from_secs(10));
    wait_for_alert(&agent, "quic-attempt", Duration::from_secs(10));
    fs::write(
        agent.policies_dir().join("policy.yaml"),
        "default_action: block\nrules: []\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // Restart in the middle of the outage: the spool carries them over,
    // and the restart itself raises an enforcement gap.
    agent.restart();
    wait_for_alert(&agent, "enforcement-gap", Duration::from_secs(10));

    // The receiver comes back after 30 s.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    let log = dir.path().join("received.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/webhook_receiver.py");
    let mut receiver = Command::new("python3")
        .arg(script)
        .args([
            "--port",
            &port.to_string(),
            "--secret",
            "test-webhook-secret",
            "--log",
        ])
        .arg(&log)
        .spawn()
        .expect("start the webhook receiver");
    let deadline = Instant::now() + Duration::from_secs(90);
    let wanted = ["quic-attempt", "policy-invalid", "enforcement-gap"];
    loop {
        let received = modelgate_tests::json_lines(&log);
        if wanted
            .iter()
            .all(|kind| received.iter().any(|r| r["type"] == *kind))
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = receiver.kill();
            panic!(
                "not every alert arrived: {received:#?}\nagent log:\n{}",
                agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2)); // anything duplicated would land now
    let received = modelgate_tests::json_lines(&log)
        .into_iter()
        .collect::<Vec<_>>();
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(
        received.iter().all(|r| r["signature_ok"] == true),
        "{received:#?}"
    );
    let mut seen = std::collections::HashSet::new();
    for r in &received {
        let key = (
            r["id"].to_string(),
            r["count"].to_string(),
            r["last_seen"].to_string(),
        );
        assert!(seen.insert(key), "delivered twice: {r} in {received:#?}");
    }
    eprintln!(
        "{} alert deliveries after a {:.0} s outage: {received:?}",
        received.len(),
        outage.elapsed().as_secs_f64()
    );
}
