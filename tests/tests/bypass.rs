//! Bypass detection: addresses learned from DNS answers, wildcards too.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use modelgate_tests::{Agent, AgentSpec, TestCgroup, output, require_root};

/// The stdlib DNS stand-in (tests/standin/dns_server.py) on `bind`:53.
struct DnsServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    fn start(bind: &str, zone: &str) -> DnsServer {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/dns_server.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--bind", bind, "--zone", zone, "--ready"])
            .arg(&ready)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the DNS stand-in");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "the DNS stand-in did not start on {bind}:53"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        DnsServer { child, _dir: dir }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resolve a fresh wildcard name and connect to its fresh address at once,
/// `tries` times; prints how each connect ended.
const RESOLVE_AND_CONNECT: &str = r#"
import errno, json, socket, sys
tries, counts = int(sys.argv[1]), {}
for i in range(tries):
    name = f"r{i}.openai.azure.com"
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
    let _dns = DnsServer::start("127.0.2.53", "openai.azure.com");
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
    let tries = 1000;
    let mut cmd = cgroup.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(&resolv)
        .args(["python3", "-c", RESOLVE_AND_CONNECT, &tries.to_string()]);
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
