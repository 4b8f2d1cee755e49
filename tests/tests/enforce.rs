//! The kernel hook with real processes: report, block, leave alone.

use std::{process::Command, time::Duration};

use modelgate_tests::{Agent, AgentSpec, Listener, TestCgroup, curl, output, require_root};
use serde_json::Value;

const PY_CONNECT: &str = r#"
import errno, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

fn endpoints(port: u16, addresses: &str) -> String {
    format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n    ports: [{port}, 443]\n    addresses: [{addresses}]\n"
    )
}

/// A test cgroup, a stand-in endpoint on 127.0.0.9 and an agent attached to
/// the cgroup with `policy`. Fields drop in order: the agent stops first.
struct Fixture {
    agent: Agent,
    port: u16,
    cgroup: TestCgroup,
    _listener: Listener,
}

fn fixture(name: &str, policy: &str) -> Fixture {
    require_root();
    let cgroup = TestCgroup::new(name);
    let listener = Listener::start("127.0.0.9:0");
    let port = listener.addr.port();
    let agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &endpoints(port, "127.0.0.9"),
        policy,
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });
    Fixture {
        agent,
        port,
        cgroup,
        _listener: listener,
    }
}

fn python_connect(cgroup: &TestCgroup, ip: &str, port: u16) -> (u32, String) {
    let child = cgroup
        .command("python3")
        .args(["-c", PY_CONNECT, ip, &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    let pid = child.id();
    let out = child.wait_with_output().expect("python3 output");
    (pid, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn by_pid(pid: u32) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["identity"]["pid"] == pid
}

#[test]
fn monitor_reports_curl_and_python_with_identity() {
    let Fixture {
        agent,
        port,
        cgroup,
        ..
    } = &fixture("monitor", "default_action: monitor\nrules: []\n");
    let port = *port;

    let mut cmd = cgroup.command("curl");
    let child = curl(&mut cmd, &format!("http://127.0.0.9:{port}/v1/models"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let curl_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "monitor must let curl through"
    );
    let event = agent.wait_for_event("curl's connect", by_pid(curl_pid));
    assert_eq!(event["action"], "monitor", "{event:#}");
    assert_eq!(event["rule"], "default", "{event:#}");
    assert_eq!(event["gen_ai.provider.name"], "openai", "{event:#}");
    assert_eq!(event["destination"]["ip"], "127.0.0.9", "{event:#}");
    assert_eq!(event["destination"]["port"], port, "{event:#}");
    let id = &event["identity"];
    assert_eq!(id["tgid"], curl_pid, "{event:#}");
    assert_eq!(id["exe"], "/usr/bin/curl", "{event:#}");
    assert_eq!(id["comm"], "curl", "{event:#}");
    assert_eq!(id["uid"], 0, "{event:#}");
    assert_eq!(id["user"], "root", "{event:#}");
    assert_eq!(id["cgroup"], cgroup.rel(), "{event:#}");
    assert_eq!(
        id["ppid"],
        std::process::id(),
        "the test is curl's parent: {event:#}"
    );
    assert!(
        id["cmdline"].as_str().unwrap_or("").contains("/v1/models"),
        "{event:#}"
    );

    let (py_pid, result) = python_connect(cgroup, "127.0.0.9", port);
    assert_eq!(result, "connected", "monitor must let python through");
    let event = agent.wait_for_event("python's connect", by_pid(py_pid));
    assert_eq!(event["action"], "monitor", "{event:#}");
    let exe = event["identity"]["exe"].as_str().unwrap_or("");
    assert!(exe.contains("python3"), "python's exe, got {event:#}");
}

#[test]
fn block_fails_connect_with_eperm_and_names_the_rule() {
    require_root();
    let cgroup = TestCgroup::new("block");
    let listener = Listener::start("127.0.0.9:0");
    let port = listener.addr.port();
    // One rule the kernel checks per cgroup, one it checks per process.
    let policy = format!(
        "default_action: monitor\nrules:\n  - name: no-models-for-python\n    match:\n      exe: [\"**/python3*\"]\n    action: block\n  - name: test-cgroup-blocked\n    match:\n      cgroup: [\"{}\"]\n    action: block\n",
        cgroup.rel()
    );
    let agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &endpoints(port, "127.0.0.9"),
        policy: &policy,
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });

    let (py_pid, result) = python_connect(&cgroup, "127.0.0.9", port);
    assert_eq!(result, "EPERM", "python's connect() must fail with EPERM");
    let event = agent.wait_for_event("python's blocked connect", by_pid(py_pid));
    assert_eq!(event["action"], "block", "{event:#}");
    assert_eq!(event["rule"], "no-models-for-python", "{event:#}");
    assert_eq!(event["decided_by"], "process", "{event:#}");

    let mut cmd = cgroup.command("curl");
    let child = curl(&mut cmd, &format!("http://127.0.0.9:{port}/"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let curl_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "curl exit 7: could not connect");
    let event = agent.wait_for_event("curl's blocked connect", by_pid(curl_pid));
    assert_eq!(event["action"], "block", "{event:#}");
    assert_eq!(event["rule"], "test-cgroup-blocked", "{event:#}");
    assert_eq!(event["decided_by"], "cgroup", "{event:#}");

    // A v4-mapped IPv6 destination goes through connect6 and is the same endpoint.
    let (pid, result) = python_connect(&cgroup, "::ffff:127.0.0.9", port);
    assert_eq!(result, "EPERM", "v4-mapped connect6 must be blocked too");
    let event = agent.wait_for_event("v4-mapped connect", by_pid(pid));
    assert_eq!(event["destination"]["ip"], "127.0.0.9", "{event:#}");
}

#[test]
fn outside_processes_and_other_destinations_are_untouched() {
    let Fixture {
        agent,
        port,
        cgroup,
        ..
    } = &fixture("untouched", "default_action: block\nrules: []\n");
    let port = *port;
    let other = Listener::start("127.0.0.10:0");

    // The test process itself is outside the agent's cgroup.
    let mut cmd = Command::new("curl");
    let out = output(curl(&mut cmd, &format!("http://127.0.0.9:{port}/")));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "a process outside the attached cgroup must not be blocked"
    );

    // Inside the cgroup, a destination that is not in the catalog.
    let (pid, result) = python_connect(cgroup, "127.0.0.10", other.addr.port());
    assert_eq!(result, "connected", "a non-endpoint must not be blocked");
    // Same address, a port that is not the endpoint's.
    let (pid2, result) = python_connect(cgroup, "127.0.0.9", other.addr.port());
    assert_ne!(
        result, "EPERM",
        "another port of the address is not an endpoint"
    );

    // And the endpoint itself from inside is blocked (the setup works).
    let (blocked, result) = python_connect(cgroup, "127.0.0.9", port);
    assert_eq!(result, "EPERM", "the endpoint itself is blocked");
    agent.wait_for_event("the blocked connect", by_pid(blocked));
    agent.assert_no_event("untouched connects", Duration::from_millis(300), |e| {
        e["identity"]["pid"] == pid
            || e["identity"]["pid"] == pid2
            || e["identity"]["pid"] == std::process::id()
    });
    assert!(
        agent
            .events_now()
            .iter()
            .all(|e| e["identity"]["cgroup"] == cgroup.rel()),
        "every record comes from the test cgroup"
    );
}

#[test]
fn short_lived_process_is_attributed_with_its_exe() {
    let Fixture {
        agent,
        port,
        cgroup,
        ..
    } = &fixture("shortlived", "default_action: block\nrules: []\n");
    let port = *port;
    // sh execs curl (same pid), which fails at once and exits: by the time
    // the agent reads the event, /proc/PID is gone.
    let child = cgroup
        .command("sh")
        .args([
            "-c",
            &format!(
                "exec curl -sS --max-time 5 -H 'Authorization: Bearer sk-test-0123456789abcdef' \
                 http://127.0.0.9:{port}/"
            ),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "curl could not connect");
    let event = agent.wait_for_event("the short-lived curl", by_pid(pid));
    assert_eq!(event["identity"]["exe"], "/usr/bin/curl", "{event:#}");
    assert_eq!(event["identity"]["comm"], "curl", "{event:#}");
    // argv as exec'd, captured in the kernel, with the secret masked.
    assert_eq!(
        event["identity"]["cmdline"],
        format!("curl -sS --max-time 5 -H 'Authorization: ***' http://127.0.0.9:{port}/"),
        "{event:#}"
    );
}

#[test]
fn ipv6_and_cidr_endpoints() {
    require_root();
    let cgroup = TestCgroup::new("v6cidr");
    let v6 = Listener::start("[::1]:0");
    let cidr = Listener::start("127.0.8.7:0");
    let port_v6 = v6.addr.port();
    let port_cidr = cidr.addr.port();
    let endpoints = format!(
        "providers:\n  - name: local-v6\n    api: openai-compatible\n    ports: [{port_v6}]\n    addresses: [\"::1\"]\n  - name: vllm-range\n    api: openai-compatible\n    ports: [{port_cidr}]\n    addresses: [127.0.8.0/24]\n"
    );
    let agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &endpoints,
        policy: "default_action: block\nrules: []\n",
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });

    let (pid, result) = python_connect(&cgroup, "::1", port_v6);
    assert_eq!(result, "EPERM", "::1 endpoint blocked");
    let event = agent.wait_for_event("the IPv6 connect", by_pid(pid));
    assert_eq!(event["destination"]["ip"], "::1", "{event:#}");
    assert_eq!(event["gen_ai.provider.name"], "local-v6", "{event:#}");

    let (pid, result) = python_connect(&cgroup, "127.0.8.7", port_cidr);
    assert_eq!(result, "EPERM", "an address inside the CIDR is blocked");
    let event = agent.wait_for_event("the CIDR connect", by_pid(pid));
    assert_eq!(event["gen_ai.provider.name"], "vllm-range", "{event:#}");

    let outside = Listener::start("127.0.9.7:0");
    let (_, result) = python_connect(&cgroup, "127.0.9.7", outside.addr.port());
    assert_eq!(result, "connected", "outside the CIDR is untouched");
    let (_, result) = python_connect(&cgroup, "127.0.9.7", port_cidr);
    assert_ne!(
        result, "EPERM",
        "outside the CIDR on the endpoint port is untouched"
    );
}

const PY_UDP: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"\xc0quic-initial", (sys.argv[1], int(sys.argv[2])))
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

#[test]
fn udp_to_an_endpoint_port_443_is_refused_under_block() {
    require_root();
    let cgroup = TestCgroup::new("quic");
    let agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &endpoints(8443, "127.0.0.9"),
        policy: "default_action: block\nrules: []\n",
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });
    let child = cgroup
        .command("python3")
        .args(["-c", PY_UDP, "127.0.0.9", "443"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "EPERM",
        "UDP/443 to an endpoint must be refused"
    );
    let event = agent.wait_for_event("the QUIC attempt", by_pid(pid));
    assert_eq!(event["event"], "udp", "{event:#}");
    assert_eq!(event["action"], "block", "{event:#}");

    // UDP to another port of the same address (not QUIC) is left alone.
    let child = cgroup
        .command("python3")
        .args(["-c", PY_UDP, "127.0.0.9", "8443"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sent");
}

const PY_FORK: &str = r#"
import errno, os, socket, sys
pid = os.fork()
if pid == 0:
    s = socket.socket()
    try:
        s.connect(("127.0.0.9", int(sys.argv[1])))
        print("child connected", flush=True)
    except OSError as e:
        print("child " + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"#;

#[test]
fn an_exe_rule_cannot_be_escaped_by_forking() {
    let Fixture {
        agent,
        port,
        cgroup,
        ..
    } = &fixture(
        "fork",
        "default_action: monitor\nrules:\n  - name: no-python\n    match:\n      exe: [\"**/python3*\"]\n    action: block\n",
    );
    let port = *port;
    let out = output(
        cgroup
            .command("python3")
            .args(["-c", PY_FORK, &port.to_string()]),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "child EPERM",
        "a forked child keeps its parent's per-process verdict"
    );
    let event = agent.wait_for_event("the child's connect", |e| e["action"] == "block");
    assert_eq!(event["rule"], "no-python", "{event:#}");
    assert_eq!(event["decided_by"], "process", "{event:#}");
}

#[test]
fn container_and_unit_cgroups_are_attributed_and_enforced_in_the_kernel() {
    require_root();
    let parent = TestCgroup::new("shapes");
    let docker_id = "4b7c2f9e1d3a5b6c7d8e9f00112233445566778899aabbccddeeff0011223344";
    let docker = parent.child(&format!("docker-{docker_id}.scope"));
    let unit = parent.child("billing-batch.service");
    let listener = Listener::start("127.0.0.9:0");
    let port = listener.addr.port();
    let agent = Agent::start(AgentSpec {
        cgroup: &parent,
        endpoints: &endpoints(port, "127.0.0.9"),
        policy: "default_action: monitor\nrules:\n  - name: batch-unit-blocked\n    match:\n      unit: [\"billing-*.service\"]\n    action: block\n  - name: this-container-blocked\n    match:\n      container: [4b7c2f9e1d3a]\n      runtime: [docker]\n    action: block\n",
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });

    let (pid, result) = python_connect(&docker, "127.0.0.9", port);
    assert_eq!(
        result, "EPERM",
        "the container rule is enforced at connect()"
    );
    let event = agent.wait_for_event("the container's connect", by_pid(pid));
    assert_eq!(event["identity"]["container_id"], docker_id, "{event:#}");
    assert_eq!(
        event["identity"]["container_runtime"], "docker",
        "{event:#}"
    );
    assert_eq!(event["rule"], "this-container-blocked", "{event:#}");
    assert_eq!(event["decided_by"], "cgroup", "{event:#}");

    let (pid, result) = python_connect(&unit, "127.0.0.9", port);
    assert_eq!(result, "EPERM", "the unit rule is enforced at connect()");
    let event = agent.wait_for_event("the unit's connect", by_pid(pid));
    assert_eq!(
        event["identity"]["unit"], "billing-batch.service",
        "{event:#}"
    );
    assert_eq!(event["rule"], "batch-unit-blocked", "{event:#}");

    let (pid, result) = python_connect(&parent, "127.0.0.9", port);
    assert_eq!(
        result, "connected",
        "the parent cgroup matches neither rule"
    );
    let event = agent.wait_for_event("the parent's connect", by_pid(pid));
    assert_eq!(event["action"], "monitor", "{event:#}");
}

#[test]
fn catalog_host_names_are_resolved_into_the_endpoint_map() {
    require_root();
    let cgroup = TestCgroup::new("resolve");
    let listener = Listener::start("127.0.0.11:0");
    let port = listener.addr.port();
    let agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &format!(
            "providers:\n  - name: anthropic\n    api: anthropic\n    hosts: [api.anthropic.com]\n    ports: [{port}]\n"
        ),
        policy: "default_action: block\nrules: []\n",
        extra_args: &[],
        hosts_file: Some("127.0.0.1 localhost\n127.0.0.11 api.anthropic.com\n"),
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });
    // The answer lands shortly after start; poll until the connect is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let (pid, result) = python_connect(&cgroup, "127.0.0.11", port);
        if result == "EPERM" {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "127.0.0.11 (api.anthropic.com in the agent's /etc/hosts) was never blocked; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let event = agent.wait_for_event("the resolved endpoint", by_pid(pid));
    assert_eq!(
        event["destination"]["host"], "api.anthropic.com",
        "{event:#}"
    );
    assert_eq!(event["gen_ai.provider.name"], "anthropic", "{event:#}");
}
