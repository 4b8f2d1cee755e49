//! Stand-in model APIs for proxy tests: a test CA, a TLS server speaking
//! OpenAI/Anthropic shapes (tests/standin/model_server.py), and the log of
//! what reached it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;

use crate::{Agent, AgentSpec, TestCgroup, require_root};

/// A throwaway CA and a server certificate for `hosts`.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(hosts: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "modelgate test upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let pki = Pki {
            ca: dir.path().join("upstream-ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            dir,
        };
        fs::write(&pki.ca, ca_cert.pem()).unwrap();
        fs::write(&pki.cert, cert.pem()).unwrap();
        fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

/// The Python stand-in, listening with TLS on `bind:port`.
pub struct ModelServer {
    child: Child,
    pub log: PathBuf,
    pub marker: PathBuf,
    _dir: tempfile::TempDir,
}

impl ModelServer {
    pub fn start(pki: &Pki, bind: &str, port: u16, chunks: u32, chunk_delay: f64) -> ModelServer {
        ModelServer::with_args(
            pki,
            bind,
            port,
            &[
                "--chunks",
                &chunks.to_string(),
                "--chunk-delay",
                &chunk_delay.to_string(),
            ],
        )
    }

    /// The stand-in without TLS: a server on port 80 (`pki` is not read).
    pub fn plain(pki: &Pki, bind: &str, port: u16, chunks: u32) -> ModelServer {
        ModelServer::with_args(
            pki,
            bind,
            port,
            &["--plain", "--chunks", &chunks.to_string()],
        )
    }

    /// The stand-in refusing with a 403, as AWS does, every POST whose
    /// SigV4 signature (made with `secret`) does not verify over the body
    /// it received.
    pub fn signed(pki: &Pki, bind: &str, port: u16, secret: &str) -> ModelServer {
        ModelServer::with_args(pki, bind, port, &["--sigv4-secret", secret])
    }

    /// The stand-in as an OpenAI-compatible server that reports no usage,
    /// even to a stream that asks for it.
    pub fn no_usage(pki: &Pki, bind: &str, port: u16, chunks: u32) -> ModelServer {
        ModelServer::with_args(
            pki,
            bind,
            port,
            &["--no-usage", "--chunks", &chunks.to_string()],
        )
    }

    /// tests/standin/model_server.py with `args`.
    fn with_args(pki: &Pki, bind: &str, port: u16, args: &[&str]) -> ModelServer {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/model_server.py");
        let marker = dir.path().join("last-chunk-sent");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg("--marker").arg(&marker).args(args);
        ModelServer::spawn(cmd, dir, marker, pki, bind, port)
    }

    /// The lenient stand-in (tests/standin/lenient_server.py): answers
    /// everything with a 200 and logs what a forgiving upstream would read
    /// (decoded bodies, `seen` texts). Needs the venv python of `cargo xtask
    /// test` for brotli and zstandard.
    pub fn lenient(pki: &Pki, bind: &str, port: u16) -> ModelServer {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/lenient_server.py");
        let mut cmd = Command::new(test_python("brotli and zstandard"));
        cmd.arg(script);
        let marker = dir.path().join("unused");
        ModelServer::spawn(cmd, dir, marker, pki, bind, port)
    }

    /// The Realtime stand-in (tests/standin/realtime_server.py): a
    /// WebSocket server speaking the OpenAI Realtime API, logging the
    /// opening request, every message and the close. Needs the venv python
    /// of `cargo xtask test` for `websockets`.
    pub fn realtime(pki: &Pki, bind: &str, port: u16) -> ModelServer {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/realtime_server.py");
        let mut cmd = Command::new(test_python("websockets"));
        cmd.arg(script);
        let marker = dir.path().join("unused");
        ModelServer::spawn(cmd, dir, marker, pki, bind, port)
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        marker: PathBuf,
        pki: &Pki,
        bind: &str,
        port: u16,
    ) -> ModelServer {
        let ready = dir.path().join("ready");
        let log = dir.path().join("upstream.jsonl");
        let child = cmd
            .args(["--bind", bind, "--port", &port.to_string()])
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the stand-in model server (python3)");
        let mut server = ModelServer {
            child,
            log,
            marker,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the stand-in model server on {bind}:{port} exited ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "the stand-in model server did not start on {bind}:{port}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Stops serving: the endpoint is down from now on.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every request the stand-in received.
    pub fn requests(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const HOST: &str = "api.openai.com";

/// The venv python `cargo xtask test` makes (MODELGATE_TEST_PYTHON), with
/// `what` installed.
pub fn test_python(what: &str) -> PathBuf {
    std::env::var_os("MODELGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("MODELGATE_TEST_PYTHON (a python with {what}) is set by `cargo xtask test`")
        })
}

/// Which stand-in plays the upstream.
enum Upstream {
    /// model_server.py: `chunks` stream chunks `delay` seconds apart.
    Model { chunks: u32, delay: f64 },
    /// model_server.py reporting no usage.
    NoUsage { chunks: u32 },
    /// lenient_server.py.
    Lenient,
    /// realtime_server.py.
    Realtime,
}

/// One redirect setup: a stand-in for HOST on `ip`:443 and an agent whose
/// catalog maps HOST to `ip`, with `policy`.
pub struct Setup {
    pub agent: Agent,
    pub server: ModelServer,
    pub pki: Pki,
    pub ip: &'static str,
    pub cgroup: TestCgroup,
}

pub fn setup(
    name: &str,
    ip: &'static str,
    policy: &str,
    chunks: u32,
    delay: f64,
    agent_in_cgroup: bool,
) -> Setup {
    setup_with_config(name, ip, policy, chunks, delay, agent_in_cgroup, "")
}

/// [`setup_with_config`] with the state directory on a tmpfs of `size`.
pub fn setup_on_tmpfs(name: &str, ip: &'static str, config: &str, size: &str) -> Setup {
    setup_inner(
        name,
        ip,
        "default_action: redirect\nrules: []\n",
        Upstream::Model {
            chunks: 1,
            delay: 0.0,
        },
        false,
        config,
        Some(size),
    )
}

/// [`setup`] with more `agent.yaml`.
pub fn setup_with_config(
    name: &str,
    ip: &'static str,
    policy: &str,
    chunks: u32,
    delay: f64,
    agent_in_cgroup: bool,
    config: &str,
) -> Setup {
    setup_inner(
        name,
        ip,
        policy,
        Upstream::Model { chunks, delay },
        agent_in_cgroup,
        config,
        None,
    )
}

/// [`setup`] with a stand-in that reports no usage
/// ([`ModelServer::no_usage`]).
pub fn setup_no_usage(name: &str, ip: &'static str, policy: &str, chunks: u32) -> Setup {
    setup_inner(
        name,
        ip,
        policy,
        Upstream::NoUsage { chunks },
        false,
        "",
        None,
    )
}

/// [`setup`] with the lenient stand-in ([`ModelServer::lenient`]) as the
/// upstream.
pub fn setup_lenient(name: &str, ip: &'static str, policy: &str) -> Setup {
    setup_inner(name, ip, policy, Upstream::Lenient, false, "", None)
}

/// [`setup`] with the Realtime stand-in ([`ModelServer::realtime`]) as
/// the upstream.
pub fn setup_realtime(name: &str, ip: &'static str, policy: &str) -> Setup {
    setup_inner(name, ip, policy, Upstream::Realtime, false, "", None)
}

fn setup_inner(
    name: &str,
    ip: &'static str,
    policy: &str,
    upstream: Upstream,
    agent_in_cgroup: bool,
    config: &str,
    state_tmpfs: Option<&str>,
) -> Setup {
    require_root();
    let cgroup = TestCgroup::new(name);
    let pki = Pki::new(&[HOST]);
    let server = match upstream {
        Upstream::Model { chunks, delay } => ModelServer::start(&pki, ip, 443, chunks, delay),
        Upstream::NoUsage { chunks } => ModelServer::no_usage(&pki, ip, 443, chunks),
        Upstream::Lenient => ModelServer::lenient(&pki, ip, 443),
        Upstream::Realtime => ModelServer::realtime(&pki, ip, 443),
    };
    let endpoints = format!(
        "providers:\n  - name: openai\n    api: openai\n    hosts: [{HOST}]\n    addresses: [{ip}]\n"
    );
    let ca = pki.ca.display().to_string();
    let args = [
        "--proxy-port",
        "0",
        "--upstream-ca",
        ca.as_str(),
        "--store-prompts",
        "hash",
    ];
    let mut spec = AgentSpec::new(&cgroup, &endpoints, policy);
    spec.extra_args = &args;
    spec.agent_in_cgroup = agent_in_cgroup;
    spec.config = config;
    spec.state_tmpfs = state_tmpfs;
    let agent = Agent::start(spec);
    Setup {
        agent,
        server,
        pki,
        ip,
        cgroup,
    }
}

impl Setup {
    pub fn curl(&self, cacert: &std::path::Path, path: &str, body: Option<&str>) -> Command {
        let mut cmd = self.cgroup.command("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(cacert)
            .args(["--resolve", &format!("{HOST}:443:{}", self.ip)])
            .arg(format!("https://{HOST}{path}"))
            .args(["-H", "authorization: Bearer sk-test-not-a-real-key-0000"]);
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "--data", body]);
        }
        cmd
    }
}

pub fn run_checked(cmd: &mut Command, what: &str) -> (u32, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn by_pid(pid: u32) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["identity"]["pid"] == pid
}
