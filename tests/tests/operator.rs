//! What the operator surfaces say is what the agent does: `status` counts
//! and sink deliveries, `policy explain` against the policy in force,
//! `top` on an 80x24 terminal (a tmux pane) with a long stream, one-shot
//! clients and a long executable path, `alerts` folding, and redactions
//! raising `data-finding` alerts.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use modelgate_tests::{
    Agent, AgentSpec, TestCgroup, agent_bin, output, require_root,
    standin::{Setup, by_pid, run_checked, setup, setup_with_config},
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

fn chat(model: &str, content: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

/// Runs curl in the test cgroup; returns (pid, status code).
fn call(s: &Setup, body: &str) -> (u32, u16) {
    let mut cmd = s.curl(&s.agent.ca(), "/v1/chat/completions", Some(body));
    cmd.args(["-o", "/dev/null", "-w", "%{http_code}"]);
    let (pid, out) = run_checked(&mut cmd, "curl");
    (pid, out.trim().parse().expect("status code"))
}

/// Waits up to 10 s for `found` to hold on the agent's `status --json`.
fn wait_for_status(state: &Path, what: &str, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value =
            serde_json::from_str(&cli_ok(state, &["status", "--json"])).expect("status --json");
        if found(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}:\n{status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sink<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name}: {status:#}"))
}

const DATA_POLICY: &str = r#"default_action: redirect
rules:
  - name: protect-data
    action: redirect
    controls:
      data:
        secret: block
        pii: redact
"#;

#[test]
fn status_counts_requests_and_names_every_sink_truthfully() {
    let elsewhere = tempfile::tempdir().unwrap();
    let alerts_file = elsewhere.path().join("alerts.jsonl");
    let config = format!("alerts:\n  file:\n    path: {}\n", alerts_file.display());
    let s = setup_with_config(
        "opsstatus",
        "127.0.2.41",
        DATA_POLICY,
        1,
        0.0,
        false,
        &config,
    );
    let state = s.agent.state_dir();

    let (served, code) = call(&s, &chat("gpt-4o-mini", "hello"));
    assert_eq!(code, 200);
    let (refused, code) = call(&s, &chat("gpt-4o-mini", "deploy with AKIAIOSFODNN7EXAMPLE"));
    assert_eq!(code, 403, "a secret is refused");
    let (failed, code) = call(&s, &chat("fail-garbage", "hello"));
    assert!(code >= 500, "an upstream that answers garbage: {code}");
    for (what, pid) in [("served", served), ("refused", refused), ("failed", failed)] {
        s.agent.wait_for_audit(what, by_pid(pid));
    }

    let status = wait_for_status(&state, "3 audited requests, all written", |st| {
        st["requests"]["audited"] == 3
            && sink(st, "audit")["delivered"] == 3
            && sink(st, "usage")["delivered"].as_u64() >= Some(3)
    });
    assert_eq!(status["requests"]["errors"], 1, "{:#}", status["requests"]);
    assert_eq!(status["requests"]["refused"], 1, "{:#}", status["requests"]);
    assert_eq!(
        sink(&status, "alerts/file")["target"],
        alerts_file.display().to_string(),
        "the alert file sink names its file"
    );

    // The programs status counts are the ones the start-up log reported.
    let log = s.agent.log_text();
    let started: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "programs in force")
        .unwrap_or_else(|| panic!("no `programs in force` line:\n{log}"));
    let logged = started["attached"].as_u64().unwrap() + started["switched"].as_u64().unwrap();
    let programs = status["attach"]["programs"].as_array().unwrap();
    assert_eq!(
        programs.len() as u64,
        logged,
        "status lists every program the start-up log counted: {programs:#?}\n{started}"
    );

    let text = cli_ok(&state, &["status"]);
    assert!(
        text.contains(&format!("({logged}/{logged} programs")),
        "{text}"
    );
    assert!(
        text.contains("requests   3 audited since start: 1 served, 1 errors, 1 refused"),
        "{text}"
    );
    for name in ["audit", "usage"] {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{text}"));
        let delivered = row.split_whitespace().nth(2).unwrap();
        assert!(
            delivered.parse::<u64>().is_ok_and(|n| n >= 3),
            "{name} DELIVERED is a count: {row}"
        );
    }
    assert!(
        text.contains(&alerts_file.display().to_string()),
        "the file sink's TARGET is its path:\n{text}"
    );

    // A client that does not trust the CA: logged with plain values.
    let mut untrusting = s.cgroup.command("curl");
    untrusting
        .args(["-sS", "--max-time", "5", "--resolve"])
        .arg(format!("api.openai.com:443:{}", s.ip))
        .arg("https://api.openai.com/v1/models")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = untrusting.status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = s.agent.log_text();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("TLS handshake with the client failed"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no handshake failure logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        line.contains(r#""exe":"/usr/bin/curl""#) && !line.contains("Some("),
        "the exe as a plain value, not a Rust debug form: {line}"
    );
}

#[test]
fn explain_uses_the_running_agents_policy_and_override() {
    require_root();
    let cgroup = TestCgroup::new("opsexplain");
    let endpoints = "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n    addresses: [127.0.2.42]\n";
    let mut spec = AgentSpec::new(&cgroup, endpoints, "default_action: monitor\nrules: []\n");
    spec.extra_args = &["--default-action", "redirect"];
    let mut agent = Agent::start(spec);
    let state = agent.state_dir();
    let policies = agent.policies_dir().display().to_string();
    let ask = [
        "policy",
        "explain",
        "--host",
        "api.openai.com",
        "--model",
        "gpt-4o-mini",
    ];

    // Without --policies: the running agent's directory, and its override.
    let text = cli_ok(&state, &ask);
    assert!(
        text.contains("connect:   redirect"),
        "the agent redirects this traffic:\n{text}"
    );
    assert!(text.contains("request:   forward"), "{text}");
    assert!(
        text.contains(&policies) && text.contains("in force in the running agent"),
        "says which policy it used:\n{text}"
    );
    assert!(
        text.contains("default redirect from the running agent's override"),
        "says where the default came from:\n{text}"
    );
    // The same directory given explicitly: still the agent's override.
    let json: Value = serde_json::from_str(&cli_ok(
        &state,
        &[&ask[..], &["--policies", &policies, "--json"]].concat(),
    ))
    .expect("explain --json");
    assert_eq!(json["connect"], "redirect", "{json:#}");
    assert_eq!(json["source"]["default_action_from"], "agent", "{json:#}");
    assert_eq!(json["source"]["agent"]["pid"], agent.pid(), "{json:#}");

    // Another directory: its files and its default, and it says whose.
    let copy = tempfile::tempdir().unwrap();
    for file in ["endpoints.yaml", "policy.yaml"] {
        std::fs::copy(agent.policies_dir().join(file), copy.path().join(file)).unwrap();
    }
    let other = copy.path().display().to_string();
    let text = cli_ok(&state, &[&ask[..], &["--policies", &other]].concat());
    assert!(text.contains("connect:   monitor"), "{text}");
    assert!(
        text.contains(&format!("the running agent uses {policies}")),
        "{text}"
    );

    // No agent: the files alone, and it says so.
    agent.stop();
    let text = cli_ok(&state, &[&ask[..], &["--policies", &policies]].concat());
    assert!(text.contains("connect:   monitor"), "{text}");
    assert!(
        text.contains("no running agent") && text.contains("default monitor from the policy file"),
        "{text}"
    );
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

    fn wait_for(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.capture();
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
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = output(Command::new("tmux").args(["kill-session", "-t", &self.0]));
    }
}

/// The table rows whose first cell (the key) ends with `key`.
fn rows_ending<'a>(screen: &'a str, key: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.ends_with(key))
        })
        .collect()
}

/// Process-view rows (`<pid> <name>`) whose name is exactly `name`.
fn process_rows<'a>(screen: &'a str, name: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells.len() > 2 && cells[0].parse::<u32>().is_ok() && cells[1] == name
        })
        .collect()
}

#[test]
fn top_shows_streams_in_flight_drops_exited_clients_and_keeps_file_names() {
    // 60 chunks 0.5 s apart: a 30 s stream, longer than any wait below.
    let s = setup(
        "opstop",
        "127.0.2.43",
        "default_action: redirect\nrules: []\n",
        60,
        0.5,
        false,
    );
    let ca = s.agent.ca();
    // A client installed deep down, as pyenv does: the path is longer than
    // the key column.
    let tree = tempfile::tempdir().unwrap();
    let bin = tree
        .path()
        .join("root/.pyenv/versions/3.12.7/lib/python3.12/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let client = bin.join("curl-stream");
    std::fs::copy("/usr/bin/curl", &client).unwrap();

    let session = format!("mgopstop-{}", std::process::id());
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
    tmux.wait_for("top's header", |screen| screen.contains("group: process"));

    // One long stream: on screen, one request in flight, while it runs.
    let args: Vec<std::ffi::OsString> = s
        .curl(
            &ca,
            "/v1/chat/completions",
            Some(r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#),
        )
        .get_args()
        .map(ToOwned::to_owned)
        .collect();
    let mut stream = s.cgroup.command(client.to_str().unwrap());
    stream
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // --max-time 10 from the shared curl arguments would cut it; override.
    stream.args(["--max-time", "60"]);
    let mut stream = stream.spawn().unwrap();
    let screen = tmux.wait_for("the stream in flight", |screen| {
        process_rows(screen, "curl-stream")
            .iter()
            .any(|row| row.split_whitespace().nth(2) == Some("1"))
    });
    assert!(
        stream.try_wait().unwrap().is_none(),
        "seen while it still runs:\n{screen}"
    );
    assert!(
        process_rows(&screen, "curl-stream")[0].contains("gpt-4o-mini"),
        "with the model it asked for:\n{screen}"
    );

    // Six one-shot clients: once they have exited and done nothing for a
    // refresh, they leave the process view.
    let mut pids = Vec::new();
    for _ in 0..6 {
        let mut one = s.curl(
            &ca,
            "/v1/chat/completions",
            Some(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#),
        );
        pids.push(run_checked(&mut one, "curl").0);
    }
    for pid in &pids {
        s.agent.wait_for_audit("a one-shot client", by_pid(*pid));
    }
    // Two refreshes: one that shows their requests, one with nothing new.
    std::thread::sleep(Duration::from_secs(3));
    let screen = tmux.capture();
    assert!(
        process_rows(&screen, "curl").is_empty(),
        "exited clients with nothing new are not zero rows:\n{screen}"
    );
    assert_eq!(process_rows(&screen, "curl-stream").len(), 1, "{screen}");

    // By executable: the long path keeps its file name, the middle gives way.
    tmux.keys("g");
    let screen = tmux.wait_for("the exe grouping", |screen| screen.contains("group: exe"));
    let rows = rows_ending(&screen, "/curl-stream");
    assert_eq!(
        rows.len(),
        1,
        "the client's file name is on screen:\n{screen}"
    );
    let key = rows[0].split_whitespace().next().unwrap();
    assert!(
        key.starts_with("/tmp/") && key.contains('…'),
        "elided in the middle: {key}"
    );
    assert!(rows_ending(&screen, "/usr/bin/curl").len() == 1, "{screen}");
    assert!(screen.lines().count() <= 24);
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    tmux.keys("q");
    let _ = stream.kill();
    let _ = stream.wait();
}

#[test]
fn a_folded_alert_is_listed_once_unless_all_is_asked() {
    // As the agent stores a folded alert: at once with count 1, then with
    // the count so far when its window closes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    let alert = |id: &str, kind: &str, count: u64, last: &str| {
        serde_json::json!({
            "id": id, "time": last, "type": kind, "severity": "warning",
            "message": format!("{kind} seen"), "count": count,
            "first_seen": "2026-12-04T10:00:00.000001Z", "last_seen": last,
        })
        .to_string()
    };
    let lines = [
        alert("aaaa", "data-finding", 1, "2026-12-04T10:00:00.000001Z"),
        alert("bbbb", "unmanaged-key", 1, "2026-12-04T10:00:01.000001Z"),
        alert("aaaa", "data-finding", 2, "2026-12-04T10:01:00.000001Z"),
        alert("aaaa", "data-finding", 7, "2026-12-04T10:02:00.000001Z"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file_arg = file.display().to_string();

    let latest = cli_ok(dir.path(), &["alerts", "--json", "--file", &file_arg]);
    let latest: Vec<Value> = latest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(&str, u64)> = latest
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [("bbbb", 1), ("aaaa", 7)],
        "one line per id, in its latest state"
    );
    let table = cli_ok(dir.path(), &["alerts", "--file", &file_arg]);
    assert_eq!(
        table.lines().filter(|l| l.contains("data-finding")).count(),
        1,
        "{table}"
    );
    let all = cli_ok(
        dir.path(),
        &["alerts", "--json", "--all", "--file", &file_arg],
    );
    assert_eq!(all.lines().count(), 4, "--all: every stored line:\n{all}");
}

#[test]
fn each_redacting_rule_raises_a_folded_data_finding_alert() {
    let s = setup_with_config(
        "opsredact",
        "127.0.2.44",
        DATA_POLICY,
        1,
        0.0,
        false,
        "alerts:\n  fold_window: 2s\n",
    );
    let prompt = "mail jane.doe@example.com about the order";
    for _ in 0..3 {
        let (_, code) = call(&s, &chat("gpt-4o-mini", prompt));
        assert_eq!(code, 200, "redacted and forwarded");
    }
    let sent: Value =
        serde_json::from_str(s.server.requests()[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["messages"][0]["content"], "mail [REDACTED:email] about the order",
        "what the upstream saw"
    );
    // The first at once, the repeats folded into one more line with the
    // count when the window closes.
    let state = s.agent.state_dir();
    let deadline = Instant::now() + Duration::from_secs(15);
    let alert = loop {
        let out = cli_ok(&state, &["alerts", "--json", "--type", "data-finding"]);
        let alerts: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if alerts.len() == 1 && alerts[0]["count"] == 3 {
            break alerts[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "expected one data-finding alert with count 3; got {alerts:#?}\nall: {:#?}",
            s.agent.alerts_now()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(alert["rule"], "protect-data", "{alert:#}");
    assert_eq!(
        alert["severity"], "warning",
        "redacted data did not leave: {alert:#}"
    );
    assert!(alert["classes"].to_string().contains("email"), "{alert:#}");
    assert_eq!(alert["actions"]["email"], "redact", "{alert:#}");
    assert_eq!(
        alert["identity"]["exe"], "/usr/bin/curl",
        "who sent it: {alert:#}"
    );
    let all: Vec<Value> = cli_ok(
        &state,
        &["alerts", "--json", "--all", "--type", "data-finding"],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    // Stored: the first at once, then the fold (more than one line if the
    // requests outlasted a window), all under one id.
    assert!(all.len() >= 2, "{all:#?}");
    assert_eq!(all[0]["count"], 1, "{all:#?}");
    assert!(all.iter().all(|a| a["id"] == alert["id"]), "{all:#?}");
}
