//! A flood of connects to an endpoint from one cgroup: every one is
//! decided in the kernel, the agent keeps answering, every event is either
//! recorded or counted as lost, and its memory stays bounded.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use modelgate_tests::{Agent, AgentSpec, Listener, TestCgroup, agent_bin, require_root};
use serde_json::Value;

const FLOOD: &str = r#"
import json, socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {"eperm": 0, "ok": 0, "other": 0}
start = time.time()
for _ in range(n):
    s = socket.socket()
    try:
        s.connect((ip, port))
        counts["ok"] += 1
    except PermissionError:
        counts["eperm"] += 1
    except OSError:
        counts["other"] += 1
    finally:
        s.close()
counts["seconds"] = time.time() - start
print(json.dumps(counts))
"#;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `modelgate status --json`.
fn status(agent: &Agent) -> Value {
    let out = Command::new(agent_bin())
        .args(["status", "--json", "--state-dir"])
        .arg(agent.state_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn fifty_thousand_blocked_connects_are_all_accounted_for_and_the_agent_stays_responsive() {
    require_root();
    let cgroup = TestCgroup::new("flood");
    let listener = Listener::start("127.0.0.181:0");
    let endpoints = format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: []\n    addresses: [127.0.0.181]\n    ports: [{}]\n",
        listener.addr.port()
    );
    let agent = Agent::start(AgentSpec::new(
        &cgroup,
        &endpoints,
        "default_action: block\nrules: []\n",
    ));
    let pid = agent.pid();
    let rss_before = rss_kib(pid);
    let n = 50_000u64;
    let mut flood = cgroup
        .command("python3")
        .args([
            "-c",
            FLOOD,
            "127.0.0.181",
            &listener.addr.port().to_string(),
            &n.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, the agent answers its control socket between batches
    // of events: some answer comes mid-flood, when the kernel has refused
    // some of the connects but not all. An agent that drained the whole
    // flood first would answer only once it was over.
    let (mut answered, mut mid_flood) = (0u64, None);
    while flood.try_wait().unwrap().is_none() {
        let blocked = status(&agent)["counters"]["blocked"].as_u64().unwrap();
        answered += 1;
        if blocked > 0 && blocked < n {
            mid_flood.get_or_insert(blocked);
        }
    }
    let out = flood.wait_with_output().unwrap();
    let counts: Value = serde_json::from_slice(&out.stdout).expect("the flood's counts");
    assert_eq!(
        counts["eperm"], n,
        "every connect refused in the kernel: {counts}"
    );
    let mid_flood = mid_flood.unwrap_or_else(|| {
        panic!("none of {answered} status answers came while the flood was under way")
    });

    // Every decision is in the events file or counted as lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (recorded, lost) = loop {
        let recorded = agent
            .events_now()
            .iter()
            .filter(|e| e["action"] == "block")
            .count() as u64;
        let status = status(&agent);
        // Only connect decisions: exec and exit events of other processes
        // (this test's own `modelgate status` runs) can be lost too.
        let lost = status["counters"]["connect_events_lost"].as_u64().unwrap();
        let blocked = status["counters"]["blocked"].as_u64().unwrap();
        assert!(blocked >= n, "{status:#}");
        if recorded + lost >= n || Instant::now() > deadline {
            break (recorded, lost);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(recorded + lost, n, "{recorded} recorded + {lost} lost");
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Repeats of one alert are folded, not 50,000 alerts.
    let alerts = agent.alerts_now();
    assert!(alerts.len() < 20, "{} alerts", alerts.len());
    eprintln!(
        "flood: {n} connects in {:.1} s; {recorded} recorded, {lost} lost; RSS {rss_before} -> {rss_after} KiB; status answered {answered} times during it, first mid-flood at {mid_flood} refused",
        counts["seconds"].as_f64().unwrap()
    );
}
