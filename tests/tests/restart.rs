//! No enforcement gap: the programs and maps are pinned, so they go on
//! deciding while the agent is down (killed, restarted, upgraded), and the
//! next agent adopts them in place. A client connects in a loop through all
//! of it; every connect is counted.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use modelgate::ebpf::{EbpfError, pins::OpenLink, replace_pin};
use modelgate_tests::{Agent, AgentSpec, Listener, TestCgroup, agent_bin, require_root};
use serde_json::Value;

/// Connects to (ip, port) in a loop for `secs` seconds; prints the counts.
const LOOP: &str = r#"
import json, os, socket, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
counts = {"ok": 0, "eperm": 0, "other": 0, "pid": os.getpid()}
end = time.time() + secs
while time.time() < end:
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((ip, port))
        counts["ok"] += 1
    except PermissionError:
        counts["eperm"] += 1
    except OSError:
        counts["other"] += 1
    finally:
        s.close()
    time.sleep(0.002)
print(json.dumps(counts))
"#;

fn endpoints(ip: &str, port: u16) -> String {
    format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: []\n    addresses: [{ip}]\n    ports: [{port}]\n"
    )
}

fn start_loop(cgroup: &TestCgroup, listener: &Listener, secs: f64) -> Child {
    cgroup
        .command("python3")
        .args(["-c", LOOP])
        .arg(listener.addr.ip().to_string())
        .arg(listener.addr.port().to_string())
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the connect loop")
}

fn loop_counts(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the connect loop failed");
    serde_json::from_slice(&out.stdout).expect("the loop's counts")
}

/// One connect from the cgroup: "ok", "EPERM" or another error.
fn connect_once(cgroup: &TestCgroup, listener: &Listener) -> String {
    let script = "import socket,sys\ns=socket.socket()\ntry:\n  s.connect((sys.argv[1], int(sys.argv[2]))); print('ok')\nexcept PermissionError: print('EPERM')\nexcept OSError as e: print(e)";
    let out = cgroup
        .command("python3")
        .args(["-c", script])
        .arg(listener.addr.ip().to_string())
        .arg(listener.addr.port().to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn in_force(agent: &Agent) -> Value {
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("programs in force"))
        .expect("a `programs in force` line");
    serde_json::from_str(line).unwrap()
}

/// Waits until the events file holds `count` block decisions for `pid`.
fn wait_for_blocks(agent: &Agent, pid: u64, count: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocks = agent
            .events_now()
            .iter()
            .filter(|e| e["identity"]["tgid"] == pid && e["action"] == "block")
            .count() as u64;
        if blocks >= count || Instant::now() > deadline {
            return blocks;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_agent_keeps_blocking_and_its_successor_adopts_the_pins_with_nothing_escaping() {
    require_root();
    let cgroup = TestCgroup::new("restart-kill");
    let listener = Listener::start("127.0.0.141:0");
    let endpoints = endpoints("127.0.0.141", listener.addr.port());
    let mut agent = Agent::start(AgentSpec::new(
        &cgroup,
        &endpoints,
        "default_action: block\nrules: []\n",
    ));
    assert_eq!(in_force(&agent)["adopted"], false);
    assert_eq!(connect_once(&cgroup, &listener), "EPERM");

    let client = start_loop(&cgroup, &listener, 5.0);
    thread::sleep(Duration::from_millis(800));
    agent.kill();
    // Down: no agent at all, only what it pinned.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        connect_once(&cgroup, &listener),
        "EPERM",
        "blocked while down"
    );
    agent.start_again(&agent_bin());
    let counts = loop_counts(client);

    assert_eq!(counts["ok"], 0, "connects escaped the policy: {counts}");
    assert_eq!(counts["other"], 0, "{counts}");
    let blocked = counts["eperm"].as_u64().unwrap();
    assert!(blocked > 100, "the loop kept connecting: {counts}");
    let force = in_force(&agent);
    assert_eq!(force["adopted"], true, "{force}");
    assert_eq!(
        force["switched"], 9,
        "every cgroup link switched in place: {force}"
    );
    // Every refusal is on record, those made while no agent ran included:
    // the kernel queued them in the pinned ring buffer.
    let pid = counts["pid"].as_u64().unwrap();
    assert_eq!(wait_for_blocks(&agent, pid, blocked), blocked, "{counts}");
    let gap = agent
        .alerts_now()
        .into_iter()
        .find(|a| a["type"] == "enforcement-gap")
        .expect("the restart is an enforcement-gap alert");
    assert_eq!(gap["kernel_enforcing"], true, "{gap:#}");
    assert_eq!(gap["fail_mode"], "closed", "{gap:#}");
    assert_eq!(gap["clean_stop"], false, "{gap:#}");
}

#[test]
fn fail_open_monitors_once_the_heartbeat_stops_and_the_next_agent_reports_it() {
    require_root();
    let cgroup = TestCgroup::new("restart-open");
    let listener = Listener::start("127.0.0.142:0");
    let endpoints = endpoints("127.0.0.142", listener.addr.port());
    let mut spec = AgentSpec::new(&cgroup, &endpoints, "default_action: block\nrules: []\n");
    spec.config = "fail_mode: open\nfail_open_after: 3s\n";
    let mut agent = Agent::start(spec);
    assert_eq!(connect_once(&cgroup, &listener), "EPERM");
    // A running agent beats every second: well past 3 s, still enforced.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(connect_once(&cgroup, &listener), "EPERM");

    agent.kill();
    assert_eq!(
        connect_once(&cgroup, &listener),
        "EPERM",
        "within fail_open_after the last policy holds"
    );
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        connect_once(&cgroup, &listener),
        "ok",
        "past fail_open_after the kernel only monitors"
    );

    agent.start_again(&agent_bin());
    let record = agent.wait_for_event("the connect made while failed open", |e| {
        e["decided_by"] == "fail-open"
    });
    assert_eq!(record["action"], "monitor", "{record:#}");
    assert_eq!(connect_once(&cgroup, &listener), "EPERM", "enforced again");
    let gap = agent
        .alerts_now()
        .into_iter()
        .find(|a| a["type"] == "enforcement-gap")
        .expect("an enforcement-gap alert");
    assert_eq!(gap["fail_mode"], "open", "{gap:#}");
}

#[test]
fn an_upgrade_to_another_build_lets_no_connect_escape() {
    require_root();
    let cgroup = TestCgroup::new("restart-upgrade");
    let listener = Listener::start("127.0.0.143:0");
    let endpoints = endpoints("127.0.0.143", listener.addr.port());
    let mut agent = Agent::start(AgentSpec::new(
        &cgroup,
        &endpoints,
        "default_action: block\nrules: []\n",
    ));
    // The next version, as a package upgrade puts it in place.
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("modelgate-next");
    std::fs::copy(agent_bin(), &next).unwrap();

    let client = start_loop(&cgroup, &listener, 5.0);
    thread::sleep(Duration::from_millis(800));
    // What `systemctl restart` does after dpkg replaced the binary.
    agent.stop();
    agent.start_again(&next);
    let counts = loop_counts(client);
    assert_eq!(
        counts["ok"], 0,
        "connects escaped during the upgrade: {counts}"
    );
    assert_eq!(counts["other"], 0, "{counts}");
    assert!(counts["eperm"].as_u64().unwrap() > 100, "{counts}");
    let force = in_force(&agent);
    assert_eq!(force["switched"], 9, "{force}");
    let status = Command::new(&next)
        .args(["status", "--json", "--state-dir"])
        .arg(agent.state_dir())
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let programs = status["attach"]["programs"].as_array().unwrap();
    assert!(
        programs.iter().all(|p| p["attached"] == true),
        "{programs:?}"
    );
}

/// An upgrade whose maps changed layout cannot reuse them: the new agent
/// starts fresh maps, attaches its programs beside the old ones and only
/// then lets the old ones go — still nothing escapes.
#[test]
fn an_upgrade_that_changes_a_maps_layout_replaces_the_links_make_before_break() {
    require_root();
    let cgroup = TestCgroup::new("restart-layout");
    let listener = Listener::start("127.0.0.144:0");
    let endpoints = endpoints("127.0.0.144", listener.addr.port());
    let mut agent = Agent::start(AgentSpec::new(
        &cgroup,
        &endpoints,
        "default_action: block\nrules: []\n",
    ));
    let pins = agent.pin_dir();
    agent.stop();
    // What a build with another MG_CONFIG would have pinned: same name,
    // another value size. The old programs keep their own map (a link
    // holds it), so they go on blocking.
    let config_pin = pins.join("maps/MG_CONFIG");
    std::fs::remove_file(&config_pin).unwrap();
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&config_pin)
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "32",
            "entries",
            "1",
            "name",
            "MG_CONFIG",
        ])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        connect_once(&cgroup, &listener),
        "EPERM",
        "the old programs still block"
    );

    let client = start_loop(&cgroup, &listener, 4.0);
    thread::sleep(Duration::from_millis(500));
    agent.start_again(&agent_bin());
    let counts = loop_counts(client);
    assert_eq!(
        counts["ok"], 0,
        "connects escaped during the replacement: {counts}"
    );
    assert_eq!(counts["other"], 0, "{counts}");
    let force = in_force(&agent);
    assert_eq!(force["switched"], 0, "{force}");
    assert!(force["attached"].as_u64().unwrap() >= 9, "{force}");
    assert!(
        agent.log_text().contains("another layout"),
        "the mismatch is said"
    );
    // Exactly one set of our programs on the cgroup: the old links went.
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cgroup.path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let connect4 = listing.lines().filter(|l| l.contains("connect4")).count();
    assert_eq!(connect4, 1, "{listing}");
    assert_eq!(connect_once(&cgroup, &listener), "EPERM");
}

#[test]
fn a_replacement_that_fails_pins_the_previous_link_back() {
    require_root();
    let cgroup = TestCgroup::new("restart-repin");
    let listener = Listener::start("127.0.0.145:0");
    let endpoints = endpoints("127.0.0.145", listener.addr.port());
    let mut agent = Agent::start(AgentSpec::new(
        &cgroup,
        &endpoints,
        "default_action: block\nrules: []\n",
    ));
    let link = agent.pin_dir().join("links/mg_connect4");
    agent.stop();
    let id = |what: &str| {
        OpenLink::open(&link)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: nothing pinned at {}", link.display()))
            .info()
            .unwrap()
            .id
    };
    let before = id("before");

    // What an upgrade meets when the kernel refuses the new program's
    // attach: the old pin is already gone.
    let err = replace_pin(&link, || {
        assert!(!link.exists(), "the old pin makes way for the new");
        Err(EbpfError::Cgroup {
            path: link.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the kernel refused the attach",
            ),
        })
    })
    .unwrap_err();
    assert!(
        modelgate::errors::chain(&err).contains("refused"),
        "the attach's own error comes back: {}",
        modelgate::errors::chain(&err)
    );
    assert_eq!(id("after"), before, "the same link is pinned back");
    assert_eq!(
        connect_once(&cgroup, &listener),
        "EPERM",
        "the previous program is still in force"
    );

    agent.start_again(&agent_bin());
    assert_eq!(in_force(&agent)["adopted"], true);
    assert_eq!(connect_once(&cgroup, &listener), "EPERM");
}
