//! The proxy against hostile clients: it must not become a way to reach
//! other hosts, must not be confused by ambiguous requests, and must not be
//! exhausted by slow, huge or numerous clients. Each refusal is checked
//! from the client's side, the upstream's (nothing arrived) and the record.

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use modelgate_tests::{
    agent_bin, output,
    standin::{HOST, Setup, setup_with_config},
};
use serde_json::Value;

/// Raw bytes over TLS to ip:443 as `sni`; prints the status line, or the
/// error / EOF, and how long the server took to answer or close.
const RAW_TLS: &str = r#"
import socket, ssl, sys, time
ca, ip, sni, payload, wait = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
start = time.time()
try:
    t = ctx.wrap_socket(socket.create_connection((ip, 443), timeout=15), server_hostname=sni)
except Exception as e:
    print("handshake-failed", type(e).__name__)
    sys.exit(0)
t.settimeout(15)
try:
    t.sendall(payload.encode().decode("unicode_escape").encode("latin-1"))
except Exception as e:
    print("error", type(e).__name__, round(time.time() - start, 1))
    sys.exit(0)
time.sleep(wait)
data = b""
try:
    while chunk := t.recv(65536):
        data += chunk
        if b"\r\n\r\n" in data and wait == 0:
            break
except Exception as e:
    print("error", type(e).__name__, round(time.time() - start, 1))
    sys.exit(0)
line = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "eof"
print(line, round(time.time() - start, 1))
"#;

fn raw(s: &Setup, sni: &str, payload: &str, wait: f64) -> String {
    let out = output(s.cgroup.command("python3").args([
        "-c",
        RAW_TLS,
        &s.agent.ca().display().to_string(),
        s.ip,
        sni,
        payload,
        &wait.to_string(),
    ]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for_alert(s: &Setup, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(alert) = s.agent.alerts_now().into_iter().find(|a| a["type"] == kind) {
            return alert;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} alert: {:#?}",
            s.agent.alerts_now()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn post(host: &str, extra: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Type: application/json\\r\\n{extra}Content-Length: {}\\r\\n\\r\\n{body}",
        body.len()
    )
}

#[test]
fn a_request_for_another_host_is_refused_and_raises_domain_fronting() {
    let s = setup_with_config(
        "front",
        "127.0.0.161",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
        "",
    );
    // The Host header names another host on a connection admitted for the
    // provider's.
    let reply = raw(&s, HOST, &post("evil.example.com", "", CHAT), 0.0);
    assert!(reply.starts_with("HTTP/1.1 421"), "{reply}");
    let alert = wait_for_alert(&s, "domain-fronting");
    assert_eq!(alert["host"], "evil.example.com", "{alert:#}");
    assert_eq!(alert["severity"], "high", "{alert:#}");
    // The SNI names another host: no TLS session at all.
    let reply = raw(&s, "evil2.example.com", &post(HOST, "", CHAT), 0.0);
    assert!(
        reply.starts_with("handshake-failed") || reply.starts_with("eof"),
        "{reply}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .agent
        .alerts_now()
        .iter()
        .any(|a| a["host"] == "evil2.example.com")
    {
        assert!(Instant::now() < deadline, "no alert for the SNI");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        s.server.requests().is_empty(),
        "nothing may reach upstream: {:?}",
        s.server.requests()
    );
    let audit = s.agent.audit_now();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["outcome"] == "host_mismatch")
            .count(),
        2,
        "{audit:#?}"
    );
}

#[test]
fn ambiguous_framing_and_oversized_heads_are_refused() {
    let s = setup_with_config(
        "smuggle",
        "127.0.0.162",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
        "",
    );
    let smuggled = format!(
        "POST /v1/chat/completions HTTP/1.1\\r\\nHost: {HOST}\\r\\nContent-Type: application/json\\r\\nContent-Length: {}\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /admin HTTP/1.1\\r\\nHost: {HOST}\\r\\n\\r\\n",
        CHAT.len()
    );
    let reply = raw(&s, HOST, &smuggled, 1.0);
    assert!(reply.starts_with("HTTP/1.1 "), "{reply}");
    // Framed once, by Transfer-Encoding (hyper drops the Content-Length
    // and closes the connection after): upstream got one well-framed POST
    // with the chunked body (empty); the GET hidden behind it reached no
    // one, neither inside a body nor as a request of its own.
    std::thread::sleep(Duration::from_millis(500));
    let upstream = s.server.requests();
    assert_eq!(upstream.len(), 1, "{upstream:#?}");
    assert_eq!(upstream[0]["method"], "POST");
    assert_eq!(upstream[0]["body"], "", "{upstream:#?}");
    assert!(
        s.agent.audit_now().iter().all(|r| r["path"] != "/admin"),
        "{:#?}",
        s.agent.audit_now()
    );
    // Two Content-Lengths that disagree.
    let reply = raw(
        &s,
        HOST,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\\r\\nHost: {HOST}\\r\\nContent-Length: 5\\r\\nContent-Length: 50\\r\\n\\r\\nhello"
        ),
        0.0,
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // A head past client_limits.max_header_bytes (64 KiB by default).
    let big = format!("X-Filler: {}\\r\\n", "a".repeat(100 * 1024));
    let reply = raw(&s, HOST, &post(HOST, &big, CHAT), 0.0);
    assert!(
        reply.starts_with("HTTP/1.1 431") || reply.starts_with("eof") || reply.starts_with("error"),
        "{reply}"
    );
    assert_eq!(
        s.server.requests().len(),
        1,
        "nothing more reached upstream"
    );
    // And the proxy still serves a well-formed request afterwards.
    let reply = raw(&s, HOST, &post(HOST, "Connection: close\\r\\n", CHAT), 0.0);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_connections_are_bounded() {
    let config =
        "client_limits:\n  header_timeout: 2s\n  body_timeout: 2s\n  max_connections: 64\n";
    let s = setup_with_config(
        "slow",
        "127.0.0.163",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
        config,
    );
    // Half a head, then nothing: closed at the header timeout.
    let reply = raw(
        &s,
        HOST,
        &format!("POST /v1/chat/completions HTTP/1.1\\r\\nHost: {HOST}\\r\\n"),
        4.0,
    );
    let took: f64 = reply.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        reply.starts_with("eof") || reply.starts_with("HTTP/1.1 408") || reply.starts_with("error"),
        "{reply}"
    );
    assert!(took < 10.0, "{reply}");
    // The whole head but half the body: 408 with a record.
    let half = format!(
        "POST /v1/chat/completions HTTP/1.1\\r\\nHost: {HOST}\\r\\nContent-Type: application/json\\r\\nContent-Length: 1000\\r\\n\\r\\n{{\"model\":"
    );
    let reply = raw(&s, HOST, &half, 0.0);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        s.agent
            .audit_now()
            .iter()
            .any(|r| r["outcome"] == "client_timeout"),
        "{:#?}",
        s.agent.audit_now()
    );

    // 600 redirected connections that say nothing: at most 64 are held,
    // the rest are closed at once and counted, and the held ones go at the
    // header timeout.
    let pid = s.agent.pid();
    let fds_before = open_fds(pid);
    let idle = r#"
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
socks = []
for _ in range(600):
    s = socket.socket()
    s.connect((sys.argv[1], 443))
    socks.append(s)
time.sleep(float(sys.argv[2]))
"#;
    let mut idle_clients = s
        .cgroup
        .command("python3")
        .args(["-c", idle, s.ip, "4"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let fds_during = open_fds(pid);
    assert!(
        fds_during < fds_before + 64 + 32,
        "file descriptors must stay bounded: {fds_before} before, {fds_during} with 600 idle clients"
    );
    let _ = idle_clients.wait();
    let metrics = scrape(&s);
    let refused = sample(&metrics, "modelgate_proxy_connections_refused_total").unwrap();
    // Held ones free their slots at the header timeout, so a few hundred
    // more than 64 may get one over the run; most must not.
    assert!(refused >= 300.0, "{refused} refused\n{metrics}");
    // Once they are gone the proxy serves again.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        open_fds(pid) < fds_before + 16,
        "the idle connections were released"
    );
    let reply = raw(&s, HOST, &post(HOST, "Connection: close\\r\\n", CHAT), 0.0);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// Opens an HTTP/2 connection, then opens and at once resets streams as
/// fast as it can (the "rapid reset" attack); prints how it ended and how
/// many streams it got in.
const RAPID_RESET: &str = r#"
import socket, ssl, sys
import h2.connection, h2.config, h2.events
ca, ip, host = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
t = ctx.wrap_socket(socket.create_connection((ip, 443), timeout=10), server_hostname=host)
assert t.selected_alpn_protocol() == "h2", t.selected_alpn_protocol()
c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
c.initiate_connection()
t.sendall(c.data_to_send())
sent, ended = 0, "still open"
headers = [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "https"), (":authority", host), ("content-type", "application/json")]
try:
    for i in range(5000):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, headers)
        c.reset_stream(sid)
        t.sendall(c.data_to_send())
        sent += 1
    t.settimeout(5)
    while True:
        data = t.recv(65536)
        if not data:
            ended = "closed"
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ConnectionTerminated):
                ended = "goaway"
                raise StopIteration
        t.sendall(c.data_to_send())
except StopIteration:
    pass
except (ConnectionResetError, BrokenPipeError, ssl.SSLError, socket.timeout) as e:
    ended = "reset" if not isinstance(e, socket.timeout) else "timeout"
print(ended, sent)
"#;

#[test]
fn an_http2_rapid_reset_flood_is_cut_off() {
    let s = setup_with_config(
        "rapid",
        "127.0.0.164",
        "default_action: redirect\nrules: []\n",
        1,
        0.0,
        false,
        "",
    );
    let python = std::env::var("MODELGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = output(s.cgroup.command(&python).args([
        "-c",
        RAPID_RESET,
        &s.agent.ca().display().to_string(),
        s.ip,
        HOST,
    ]));
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = said.split(' ').next().unwrap();
    assert!(
        ["goaway", "closed", "reset"].contains(&ended),
        "the flood must be cut off: {said}"
    );
    let upstream = s.server.requests().len();
    assert!(upstream < 100, "{upstream} reset streams reached upstream");
    // The agent is fine and serves the next client.
    let reply = raw(&s, HOST, &post(HOST, "Connection: close\\r\\n", CHAT), 0.0);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn the_control_socket_refuses_a_process_outside_root_and_the_group() {
    let s = setup_with_config(
        "peercred",
        "127.0.0.165",
        "default_action: monitor\nrules: []\n",
        1,
        0.0,
        false,
        "",
    );
    let state = s.agent.state_dir();
    // Open the way on the filesystem, as a mistaken chmod would: the
    // credentials check must still say no.
    let mut dir = state.clone();
    while dir.pop() && dir.starts_with(std::env::temp_dir()) && dir != std::env::temp_dir() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        state.join("control.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = output(
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(agent_bin())
            .args(["status", "--state-dir"])
            .arg(&state),
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("403") && said.contains("modelgate` group"),
        "{said}"
    );
    assert!(
        s.agent
            .log_text()
            .contains("refused a control socket client")
    );
    // Root still gets in.
    let out = output(
        Command::new(agent_bin())
            .args(["status", "--state-dir"])
            .arg(&state),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn scrape(s: &Setup) -> String {
    let addr = s.agent.metrics_addr();
    let out = output(Command::new("curl").args(["-sS", &format!("http://{addr}/metrics")]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
