//! An `exe` rule follows the program, not its path: a copy, a hard link,
//! the dynamic loader run directly and a memfd all get EPERM under
//! `exe: [/usr/bin/curl]` → block (issue 13, point 1).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use modelgate_tests::{Agent, AgentSpec, Listener, TestCgroup, curl, require_root};
use serde_json::Value;

const CURL: &str = "/usr/bin/curl";
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
const POLICY: &str = "default_action: monitor\nrules:\n  - name: no-curl\n    match:\n      exe: [/usr/bin/curl]\n    action: block\n";

/// Runs curl's bytes from a memfd: what `exe` shows is `/memfd:curl (deleted)`.
const PY_MEMFD: &str = r#"
import os, sys
data = open("/usr/bin/curl", "rb").read()
fd = os.memfd_create("curl", 0)
os.write(fd, data)
os.execv("/proc/self/fd/%d" % fd, ["curl"] + sys.argv[1:])
"#;

struct Fixture {
    agent: Agent,
    port: u16,
    cgroup: TestCgroup,
    _listener: Listener,
    dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> Fixture {
    require_root();
    assert!(Path::new(CURL).exists(), "these tests need {CURL}");
    let cgroup = TestCgroup::new(name);
    let listener = Listener::start("127.0.0.9:0");
    let port = listener.addr.port();
    let agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &format!(
            "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n    ports: [{port}]\n    addresses: [127.0.0.9]\n"
        ),
        policy: POLICY,
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });
    // On the same file system as /usr/bin, so that a hard link can be made.
    let dir = PathBuf::from(format!("/var/tmp/mg-exec-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    Fixture {
        agent,
        port,
        cgroup,
        _listener: listener,
        dir: TempDir(dir),
    }
}

/// Runs `cmd` (a curl to the stand-in endpoint) and asserts that connect()
/// failed with EPERM, and that the agent recorded a block for it.
fn assert_blocked(fx: &Fixture, mut cmd: Command, what: &str) -> Value {
    let url = format!("http://127.0.0.9:{}/v1/models", fx.port);
    let child = curl(&mut cmd, &url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("curl's output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout, "000",
        "{what} must not reach the endpoint under `exe: [{CURL}]` → block (stderr: {stderr})"
    );
    // curl reports EPERM as "Couldn't connect" (exit 7); the kernel's
    // event says it was the block.
    assert_eq!(out.status.code(), Some(7), "{what}: curl said {stderr}");
    let event = fx
        .agent
        .wait_for_event(what, move |e| e["identity"]["pid"] == pid);
    assert_eq!(event["action"], "block", "{what}: {event:#}");
    event
}

fn curl_digest() -> String {
    let out = Command::new("sha256sum")
        .arg(CURL)
        .output()
        .expect("run sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

#[test]
fn a_copy_of_a_blocked_program_is_blocked() {
    let fx = fixture("copy");
    let copy = fx.dir.0.join("my-tool");
    std::fs::copy(CURL, &copy).expect("copy curl");
    let event = assert_blocked(
        &fx,
        fx.cgroup.command(copy.to_str().unwrap()),
        "a copy of curl",
    );
    assert_eq!(
        event["identity"]["exe"],
        copy.display().to_string(),
        "the record names the copy: {event:#}"
    );
    // The agent knows what the copy is even if the kernel decided first.
    let rule = event["rule"].as_str().unwrap_or("");
    assert!(
        rule == "no-curl" || rule == "(unvetted executable)",
        "{event:#}"
    );
    // Ran again, the copy is a vetted file: the kernel knows it at exec.
    let event = assert_blocked(
        &fx,
        fx.cgroup.command(copy.to_str().unwrap()),
        "the copy again",
    );
    assert_eq!(event["rule"], "no-curl", "{event:#}");
    assert_eq!(event["identity"]["exe_sha256"], curl_digest(), "{event:#}");

    // Other programs are not affected.
    let out = fx
        .cgroup
        .command("python3")
        .args([
            "-c",
            "import socket,sys; socket.create_connection(('127.0.0.9', int(sys.argv[1]))); print('ok')",
            &fx.port.to_string(),
        ])
        .output()
        .expect("run python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "python is not curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hard_link_to_a_blocked_program_is_blocked() {
    let fx = fixture("hardlink");
    let link = fx.dir.0.join("innocent");
    std::fs::hard_link(CURL, &link).expect("hard-link curl (same file system)");
    let event = assert_blocked(
        &fx,
        fx.cgroup.command(link.to_str().unwrap()),
        "a hard link to curl",
    );
    assert_eq!(event["identity"]["exe_sha256"], curl_digest(), "{event:#}");
    let _ = std::fs::remove_file(&link);
}

#[test]
fn the_dynamic_loader_run_directly_is_attributed_to_the_program() {
    let fx = fixture("ldso");
    assert!(Path::new(LOADER).exists(), "this test needs {LOADER}");
    let mut cmd = fx.cgroup.command(LOADER);
    cmd.arg(CURL);
    let event = assert_blocked(&fx, cmd, "curl run by ld.so");
    assert_eq!(event["identity"]["exe"], CURL, "{event:#}");
    // /proc/<pid>/exe (the resolved path) while the process lives; the
    // path the exec named when the agent gets to it after curl has gone.
    let loader = std::fs::canonicalize(LOADER).expect("resolve the loader's path");
    let reported = event["identity"]["exe_loader"].as_str().unwrap_or_default();
    assert!(
        reported == loader.display().to_string() || reported == LOADER,
        "exe_loader is neither {LOADER} nor {}: {event:#}",
        loader.display()
    );
}

#[test]
fn a_program_run_from_a_memfd_is_blocked_and_alerted() {
    let fx = fixture("memfd");
    let mut cmd = fx.cgroup.command("python3");
    cmd.args(["-c", PY_MEMFD]);
    let event = assert_blocked(&fx, cmd, "curl run from a memfd");
    assert_eq!(event["identity"]["anonymous_exec"], true, "{event:#}");
    let alert =
        fx.agent
            .wait_for_alert_where("anonymous-exec", std::time::Duration::from_secs(10), |_| {
                true
            });
    assert!(
        alert["identity"]["exe"]
            .as_str()
            .unwrap_or("")
            .starts_with("/memfd:"),
        "{alert:#}"
    );
}

#[test]
fn when_the_rules_file_changes_copies_of_its_new_bytes_are_blocked() {
    require_root();
    let dir = TempDir(PathBuf::from(format!(
        "/var/tmp/mg-exec-upgrade-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let tool = dir.0.join("tool");
    std::fs::copy("/bin/true", &tool).expect("install the first version");
    let cgroup = TestCgroup::new("upgrade");
    let listener = Listener::start("127.0.0.9:0");
    let port = listener.addr.port();
    // Dropped first (reverse order): the agent stops before the cgroup goes.
    let _agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &format!(
            "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n    ports: [{port}]\n    addresses: [127.0.0.9]\n"
        ),
        policy: &format!(
            "default_action: monitor\nrules:\n  - name: no-tool\n    match:\n      exe: [{}]\n    action: block\n",
            tool.display()
        ),
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });
    // A copy of curl is not the tool yet: it connects, and is vetted.
    let other = dir.0.join("other");
    std::fs::copy(CURL, &other).unwrap();
    let url = format!("http://127.0.0.9:{port}/");
    let run = || {
        let mut cmd = cgroup.command(other.to_str().unwrap());
        let out = curl(&mut cmd, &url).output().expect("run the copy");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(run(), "200", "curl is not the tool (yet)");
    // The tool is upgraded (to curl's bytes, new inode): within a tick the
    // agent takes its digest again, and the copy, already vetted, is
    // re-vetted as what it now is.
    let staged = dir.0.join("tool.new");
    std::fs::copy(CURL, &staged).unwrap();
    std::fs::rename(&staged, &tool).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if run() == "000" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a copy of the upgraded tool still connects 20 s after the upgrade"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
