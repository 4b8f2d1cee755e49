//! The control API through the CLI, as an operator uses it: `status`,
//! `policy reload`, `alerts` and `usage` against a running agent over its
//! socket, the answer when none runs, and `modelgate top` on a real 80x24
//! terminal (a tmux pane) during load.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use modelgate_tests::{
    Agent, AgentSpec, Listener, TestCgroup, agent_bin, curl, output, require_root,
    standin::{run_checked, setup},
};
use serde_json::Value;

fn cli(state_dir: &Path, args: &[&str]) -> Output {
    output(
        Command::new(agent_bin())
            .args(args)
            .arg("--state-dir")
            .arg(state_dir),
    )
}

fn cli_ok(state_dir: &Path, args: &[&str]) -> String {
    let out = cli(state_dir, args);
    assert!(
        out.status.success(),
        "modelgate {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(state_dir: &Path) -> Value {
    serde_json::from_str(&cli_ok(state_dir, &["status", "--json"])).expect("status --json")
}

#[test]
fn status_reload_and_alerts_go_through_the_control_socket() {
    require_root();
    let cgroup = TestCgroup::new("control");
    let listener = Listener::start("127.0.0.131:0");
    let endpoints = format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: []\n    addresses: [127.0.0.131]\n    ports: [{}]\n",
        listener.addr.port()
    );
    // The alerts file elsewhere than the state directory: only the agent
    // knows, so `modelgate alerts` must ask it.
    let elsewhere = tempfile::tempdir().unwrap();
    let alerts_file = elsewhere.path().join("alerts.jsonl");
    let config = format!("alerts:\n  file:\n    path: {}\n", alerts_file.display());
    let mut spec = AgentSpec::new(&cgroup, &endpoints, "default_action: monitor\nrules: []\n");
    spec.config = &config;
    let mut agent = Agent::start(spec);
    let state = agent.state_dir();
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700,
        "the agent makes its state directory (CA key, audit) private"
    );

    let socket = state.join("control.sock");
    let meta = std::fs::metadata(&socket).expect("the control socket is in the state dir");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let code = output(curl(
        &mut cgroup.command("curl"),
        &format!("http://{}/", listener.addr),
    ));
    assert_eq!(String::from_utf8_lossy(&code.stdout), "200");

    let first = status(&state);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["attach"]["cgroup"], cgroup.path.display().to_string());
    let programs = first["attach"]["programs"].as_array().unwrap();
    assert!(programs.len() >= 4, "{programs:?}");
    assert!(
        programs.iter().all(|p| p["attached"] == true),
        "{programs:?}"
    );
    let version = first["policy"]["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 12);
    assert_eq!(first["policy"]["default_action"], "monitor");
    assert_eq!(first["proxy"]["listeners"].as_array().unwrap().len(), 2);
    assert!(
        first["counters"]["monitored"].as_u64().unwrap() >= 1,
        "{first:#}"
    );
    let sinks: Vec<&str> = first["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for sink in ["events", "audit", "usage", "alerts", "alerts/file"] {
        assert!(sinks.contains(&sink), "{sinks:?}");
    }
    // The agent's own memory: resident, and its heap split into live
    // allocations and what the allocator keeps.
    let memory = &first["memory"];
    let rss = memory["rss_bytes"].as_u64().unwrap();
    let in_use = memory["heap_in_use_bytes"].as_u64().unwrap();
    assert!(rss > 1 << 20 && in_use > 0, "{memory:#}");
    assert!(memory["heap_free_bytes"].is_u64(), "{memory:#}");
    let text = cli_ok(&state, &["status"]);
    assert!(text.contains(&format!("policy     {version}")), "{text}");
    assert!(text.contains("memory     RSS "), "{text}");

    // A policy that does not parse: the reload is refused, says why, and
    // the old policy stays.
    let policy = agent.policies_dir().join("policy.yaml");
    std::fs::write(&policy, "default_action: explode\n").unwrap();
    let refused = cli(&state, &["policy", "reload"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("refused") && why.contains("explode"), "{why}");
    assert_eq!(status(&state)["policy"]["version"], version.as_str());

    std::fs::write(&policy, "default_action: block\nrules: []\n").unwrap();
    let said = cli_ok(&state, &["policy", "reload"]);
    let now = status(&state);
    let new_version = now["policy"]["version"].as_str().unwrap();
    assert_ne!(new_version, version);
    assert!(said.contains(new_version), "{said}");
    assert_eq!(now["policy"]["default_action"], "block");
    assert!(
        agent.log_text().contains("uid 0"),
        "the reload says who asked"
    );

    // The refusal raised an alert, written where only the agent knew.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = cli_ok(&state, &["alerts", "--json", "--type", "policy-invalid"]);
        if lines.lines().count() >= 1 {
            let alert: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
            assert_eq!(alert["type"], "policy-invalid");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no policy-invalid alert via the agent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(alerts_file.exists());

    // The kernel's monitored connect is in the usage store, asked through
    // the agent.
    let rows: Vec<Value> =
        serde_json::from_str(&cli_ok(&state, &["usage", "--json", "--by", "exe"])).unwrap();
    let curl_row = rows
        .iter()
        .find(|r| r["key"] == "/usr/bin/curl")
        .expect("curl in usage");
    assert!(curl_row["direct"].as_u64().unwrap() >= 1, "{curl_row}");

    // Stopped: the socket is gone and the CLI says what to do.
    agent.stop();
    assert!(!socket.exists(), "the socket is removed at stop");
    let out = cli(&state, &["status"]);
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("not running") && message.contains("--state-dir"),
        "{message}"
    );
    // What can be read from the files still works without the agent.
    cli_ok(&state, &["usage", "--json"]);
}

/// Kills the tmux session however the test ends.
struct Tmux(String);

impl Tmux {
    fn capture(&self) -> String {
        let out = output(Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        output(Command::new("tmux").args(["send-keys", "-t", &self.0, keys]));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = output(Command::new("tmux").args(["kill-session", "-t", &self.0]));
    }
}

/// A row whose key ends with `key` and whose request rate (after the
/// requests in flight) is above zero.
fn busy_row<'a>(screen: &'a str, key: &str) -> Option<&'a str> {
    screen.lines().find(|line| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells.windows(3).any(|cells| {
            cells[0].ends_with(key)
                && cells[1].parse::<u64>().is_ok()
                && cells[2].parse::<f64>().is_ok_and(|rate| rate > 0.0)
        })
    })
}

/// Requests in a loop until dropped, however the test ends.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_for_screen(tmux: &Tmux, what: &str, found: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let screen = tmux.capture();
        if found(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never appeared; the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn top_shows_live_rates_on_an_80x24_terminal() {
    let s = setup(
        "top",
        "127.0.0.132",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
    );
    let ca = s.agent.ca();
    let _load = {
        let stop = Arc::new(AtomicBool::new(false));
        let args: Vec<std::ffi::OsString> = s
            .curl(
                &ca,
                "/v1/chat/completions",
                Some(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#),
            )
            .get_args()
            .map(ToOwned::to_owned)
            .collect();
        let load_cgroup = s.cgroup.child("load");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                run_checked(load_cgroup.command("curl").args(&args), "curl");
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    };

    let session = format!("mgtop-{}", std::process::id());
    let command = format!(
        "{} top --state-dir {}",
        agent_bin().display(),
        s.agent.state_dir().display()
    );
    let started = output(Command::new("tmux").args([
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]));
    assert!(
        started.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let tmux = Tmux(session);

    let screen = wait_for_screen(&tmux, "a busy curl process", |screen| {
        busy_row(screen, "curl").is_some()
    });
    assert!(screen.lines().count() <= 24);
    assert!(screen.lines().all(|l| l.chars().count() <= 80));
    assert!(screen.contains("group: process"), "{screen}");
    let row = busy_row(&screen, "curl").unwrap();
    assert!(row.contains("gpt-4o-mini"), "the current model: {row}");

    // Grouped by executable, the same traffic is one row.
    tmux.keys("g");
    let screen = wait_for_screen(&tmux, "the exe grouping", |screen| {
        screen.contains("group: exe") && busy_row(screen, "/usr/bin/curl").is_some()
    });
    // A filter that matches nothing leaves no rows.
    tmux.keys("/");
    tmux.keys("nothing-matches");
    tmux.keys("Enter");
    wait_for_screen(&tmux, "the empty filter", |screen| {
        screen.contains("filter: nothing-matches") && !screen.contains("/usr/bin/curl")
    });
    drop(screen);
    tmux.keys("q");
}
