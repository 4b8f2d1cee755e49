//! Harness for the privileged integration tests: a child cgroup per test,
//! a real agent process attached to it, and clients moved into it.
//!
//! Everything a test creates is torn down by Drop, also when it fails.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod standin;

/// The agent binary under test (set by `cargo xtask test`).
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MODELGATE_BIN") {
        return PathBuf::from(bin);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/modelgate")
}

/// Fails loudly (not a silent skip) when the test cannot run for real.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF programs and must run as root: use `cargo xtask test`"
    );
    assert!(
        agent_bin().exists(),
        "agent binary {} is missing: run `cargo xtask test`, which builds it first",
        agent_bin().display()
    );
}

pub fn cgroup2_mount() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for line in text.lines() {
        if let Some((left, right)) = line.split_once(" - ")
            && right.split_whitespace().next() == Some("cgroup2")
        {
            return PathBuf::from(left.split_whitespace().nth(4).expect("mount point"));
        }
    }
    panic!("no cgroup2 mount found in /proc/self/mountinfo");
}

/// A child cgroup of the cgroup2 mount, removed (after killing anything
/// left in it) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let unique = format!(
            "modelgate-test-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = cgroup2_mount().join(unique);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// The path relative to the mount, as the agent reports it.
    pub fn rel(&self) -> String {
        format!(
            "/{}",
            self.path.strip_prefix(cgroup2_mount()).unwrap().display()
        )
    }

    pub fn child(&self, name: &str) -> TestCgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// `cmd` set up so the process joins this cgroup before it execs.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.path.join("cgroup.procs");
        unsafe {
            cmd.pre_exec(move || {
                // Writing 0 moves the writing process itself.
                fs::write(&procs, b"0")
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if let Ok(text) = fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            // Children first.
            if let Ok(entries) = fs::read_dir(&self.path) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = fs::remove_dir(entry.path());
                    }
                }
            }
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// A stand-in model endpoint: accepts, answers one line, closes.
pub struct Listener {
    pub addr: SocketAddr,
}

impl Listener {
    pub fn start(bind: &str) -> Listener {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            }
        });
        Listener { addr }
    }
}

/// The files a test agent runs on.
pub struct AgentSpec<'a> {
    pub cgroup: &'a TestCgroup,
    pub endpoints: &'a str,
    pub policy: &'a str,
    pub extra_args: &'a [&'a str],
    /// When set, the agent runs in its own mount namespace with this text
    /// bind-mounted over /etc/hosts: catalog names resolve to loopback
    /// stand-ins without touching the host's resolver.
    pub hosts_file: Option<&'a str>,
    /// Run the agent itself inside the attached cgroup, so its own upstream
    /// connections meet its hooks (the no-loop check).
    pub agent_in_cgroup: bool,
    /// More `agent.yaml` (e.g. an `alerts:` section).
    pub config: &'a str,
    /// Put the state directory on a tmpfs of this size (e.g. "4m"), which a
    /// test can fill up or remount read-only.
    pub state_tmpfs: Option<&'a str>,
}

impl<'a> AgentSpec<'a> {
    pub fn new(cgroup: &'a TestCgroup, endpoints: &'a str, policy: &'a str) -> AgentSpec<'a> {
        AgentSpec {
            cgroup,
            endpoints,
            policy,
            extra_args: &[],
            hosts_file: None,
            agent_in_cgroup: false,
            config: "",
            state_tmpfs: None,
        }
    }
}

/// A running `modelgate run`, stopped with SIGTERM on drop.
pub struct Agent {
    /// The state directory is a tmpfs of ours, unmounted on drop.
    tmpfs: bool,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub events: PathBuf,
    pub log: PathBuf,
    cgroup: PathBuf,
    extra_args: Vec<String>,
    starts: u32,
}

impl Agent {
    pub fn start(spec: AgentSpec<'_>) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        fs::write(policies.join("endpoints.yaml"), spec.endpoints).unwrap();
        fs::write(policies.join("policy.yaml"), spec.policy).unwrap();
        // Tests run side by side: each proxy takes a free port.
        fs::write(
            dir.path().join("agent.yaml"),
            format!("proxy_port: 0\nmetrics_addr: 127.0.0.1:0\n{}", spec.config),
        )
        .unwrap();
        let mut cmd = match spec.hosts_file {
            None => Command::new(agent_bin()),
            Some(hosts) => {
                let hosts_path = dir.path().join("hosts");
                fs::write(&hosts_path, hosts).unwrap();
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
                    .arg(&hosts_path)
                    .arg(agent_bin());
                cmd
            }
        };
        if spec.agent_in_cgroup {
            let procs = spec.cgroup.path.join("cgroup.procs");
            unsafe {
                cmd.pre_exec(move || fs::write(&procs, b"0"));
            }
        }
        if let Some(size) = spec.state_tmpfs {
            let state = dir.path().join("state");
            fs::create_dir(&state).unwrap();
            let status = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size}"),
                    "modelgate-test",
                ])
                .arg(&state)
                .status()
                .unwrap();
            assert!(status.success(), "mount a tmpfs state dir");
        }
        let mut agent = Agent {
            tmpfs: spec.state_tmpfs.is_some(),
            child: None,
            events: dir.path().join("events.jsonl"),
            log: dir.path().join("agent.log"),
            dir,
            cgroup: spec.cgroup.path.clone(),
            extra_args: spec.extra_args.iter().map(|a| a.to_string()).collect(),
            starts: 0,
        };
        agent.spawn(cmd);
        agent
    }

    fn spawn(&mut self, mut cmd: Command) {
        self.starts += 1;
        self.log = self.dir.path().join(format!("agent-{}.log", self.starts));
        let child = cmd
            .arg("run")
            .arg("--policies")
            .arg(self.policies_dir())
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--events")
            .arg(&self.events)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--config")
            .arg(self.dir.path().join("agent.yaml"))
            .args(["--log-format", "json"])
            .args(&self.extra_args)
            .env("MODELGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("start the agent");
        self.child = Some(child);
        self.wait_for_log("modelgate ready", Duration::from_secs(30));
    }

    /// Stops the agent and starts it again on the same state directory, as
    /// a service restart would.
    pub fn restart(&mut self) -> String {
        let log = self.stop();
        self.spawn(Command::new(agent_bin()));
        log
    }

    /// Kills the agent with SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `bin` (another build, say) on the same files, after `stop` or
    /// `kill`.
    pub fn start_again(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "stop or kill the running agent first");
        self.spawn(Command::new(bin));
    }

    /// The running agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The pin directory, from the agent's log.
    pub fn pin_dir(&self) -> PathBuf {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("programs in force"))
            .expect("a `programs in force` line");
        let value: Value = serde_json::from_str(line).expect("JSON log line");
        PathBuf::from(value["pins"].as_str().expect("pins field"))
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent's local CA, which clients must trust for redirect.
    pub fn ca(&self) -> PathBuf {
        self.state_dir().join("ca.pem")
    }

    /// The `/metrics` address, from the ready line of the log.
    pub fn metrics_addr(&self) -> String {
        self.ready_field("metrics")
    }

    /// A field of the ready line of the log.
    fn ready_field(&self, field: &str) -> String {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("modelgate ready"))
            .expect("ready line");
        let ready: Value = serde_json::from_str(line).expect("JSON log line");
        ready[field]
            .as_str()
            .unwrap_or_else(|| panic!("no `{field}` in {line}"))
            .to_string()
    }

    /// The proxy's port, from the ready line of the log.
    pub fn proxy_port(&self) -> u16 {
        let proxy = self.ready_field("proxy");
        proxy
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in the proxy address {proxy}"))
    }

    pub fn alerts_now(&self) -> Vec<Value> {
        json_lines(&self.state_dir().join("alerts.jsonl"))
    }

    /// The first alert of `kind` for which `pred` holds, waiting up to
    /// `timeout`; panics with every alert and the agent's log.
    pub fn wait_for_alert_where(
        &self,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(alert) = self
                .alerts_now()
                .into_iter()
                .find(|a| a["type"] == kind && pred(a))
            {
                return alert;
            }
            assert!(
                Instant::now() < deadline,
                "no `{kind}` alert; alerts: {:#?}\nlog:\n{}",
                self.alerts_now(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn audit_now(&self) -> Vec<Value> {
        json_lines(&self.state_dir().join("audit.jsonl"))
    }

    /// The first audit record matching `pred`, waiting up to 10 s.
    pub fn wait_for_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(record) = self.audit_now().into_iter().find(|r| pred(r)) {
                return record;
            }
            if Instant::now() > deadline {
                panic!(
                    "no audit record for {what}; records: {:#?}\nagent log:\n{}",
                    self.audit_now(),
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (counting occurrences past
    /// `skip`); panics with the log if the agent exits or time runs out.
    pub fn wait_for_log_n(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if text.matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the agent exited ({status}) before logging `{needle}`:\n{text}");
            }
            if Instant::now() > deadline {
                panic!("no `{needle}` in the agent log after {timeout:?}:\n{text}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_log_n(needle, 1, timeout);
    }

    pub fn events_now(&self) -> Vec<Value> {
        json_lines(&self.events)
    }

    /// The first record matching `pred`, waiting up to 10 s for it.
    pub fn wait_for_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.events_now().into_iter().find(|e| pred(e)) {
                return event;
            }
            if Instant::now() > deadline {
                panic!(
                    "no decision record for {what}; records: {:#?}\nagent log:\n{}",
                    self.events_now(),
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that no record matching `pred` shows up within `wait`.
    pub fn assert_no_event(&self, what: &str, wait: Duration, pred: impl Fn(&Value) -> bool) {
        thread::sleep(wait);
        let matching: Vec<Value> = self.events_now().into_iter().filter(|e| pred(e)).collect();
        assert!(
            matching.is_empty(),
            "expected no record for {what}, got {matching:#?}"
        );
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal the agent");
    }

    /// SIGTERM and wait; returns the agent's log.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
        self.log_text()
    }
}

impl Drop for Agent {
    /// Stops the agent and removes its pins: the programs outlive the
    /// agent on purpose, but not the test.
    fn drop(&mut self) {
        self.stop();
        let out = Command::new(agent_bin())
            .args(["uninstall-bpf", "--force", "--state-dir"])
            .arg(self.state_dir())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: uninstall-bpf failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("warning: uninstall-bpf: {err}"),
        }
        if self.tmpfs {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.state_dir())
                .status();
        }
    }
}

/// The complete lines of a JSON-lines file the agent is still writing: a
/// last line without its newline is not finished yet and is left out.
pub fn json_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad JSON line in {}: {l}: {e}", path.display()))
        })
        .collect()
}

/// Runs a command to completion with a time limit.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// The curl invocation tests use: quiet, bounded, HTTP to `addr`.
pub fn curl<'a>(cmd: &'a mut Command, url: &str) -> &'a mut Command {
    cmd.args([
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ])
}

/// A listener on `bind` that answers a byte to any byte it receives, on
/// every connection at once: a server that says whether bytes got to it.
pub fn answer_any_byte(bind: &str) {
    let listener = std::net::TcpListener::bind(bind).unwrap_or_else(|e| panic!("{bind}: {e}"));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(b"x").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Runs tests/standin/send_parts.py in `cgroup`: each case's parts written
/// on its own connection to `ip:port`, as separate segments. Label ->
/// "reached", "timeout" or the connect's errno name.
pub fn send_parts(
    cgroup: &TestCgroup,
    ip: &str,
    port: u16,
    cases: &[(String, Vec<Vec<u8>>)],
) -> serde_json::Map<String, Value> {
    // One code point per byte: JSON carries them, Python's latin-1 gives
    // the bytes back.
    let cases: serde_json::Map<String, Value> = cases
        .iter()
        .map(|(label, parts)| {
            let parts = parts
                .iter()
                .map(|p| Value::String(p.iter().map(|&b| b as char).collect()))
                .collect();
            (label.clone(), Value::Array(parts))
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/send_parts.py");
    // On stdin: 65 hellos are more than one argument may hold.
    let mut child = cgroup
        .command("python3")
        .arg(script)
        .args([ip, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/standin/send_parts.py");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(Value::Object(cases).to_string().as_bytes())
            .expect("write the cases to send_parts.py");
    }
    let out = child.wait_with_output().expect("wait for send_parts.py");
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Object(results)) => results,
        _ => panic!(
            "send_parts.py printed no results: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
