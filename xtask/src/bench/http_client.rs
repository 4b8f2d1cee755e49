//! `cargo xtask bench-proxy-client`: `bench proxy`'s client, run in a child
//! process placed in a cgroup before it execs. Like an SDK whose DNS answer
//! for the API host is the bench address: TCP to `--addr`, TLS with the
//! host as SNI, HTTP/1.1 keep-alive, one connection per client. Sends a
//! short chat request, or `--body-file`'s. Prints one JSON line of results
//! on stdout.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request,
    client::conn::http1::{self, SendRequest},
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::json;
use tokio::{net::TcpStream, task::JoinSet};
use tokio_rustls::TlsConnector;

use super::upstream::{CHUNKS_HEADER, DELAY_HEADER, STREAM_CHUNKS};

const PATH: &str = "/v1/chat/completions";
const BODY: &[u8] = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;
const STREAM_BODY: &[u8] =
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}],"stream":true}"#;
const WARM_UP: u32 = 100;
const STREAM_WARM_UP: u32 = 25;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One client, sequential requests: latency to the end of the body.
    Latency,
    /// One client, sequential streamed requests: to the first and last
    /// byte, and how late each chunk is against the server's pace.
    Stream,
    /// `--clients` concurrent connections for `--seconds`: throughput.
    Load,
    /// `Load` with streamed answers.
    StreamLoad,
}

#[derive(Debug, Args)]
pub struct ProxyClientArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Where to connect (the name is not resolved).
    #[arg(long)]
    pub addr: SocketAddr,
    /// The API host: SNI, certificate name and Host header.
    #[arg(long)]
    pub host: String,
    /// CA certificates (PEM) to trust; repeat for several.
    #[arg(long = "ca", required = true)]
    pub cas: Vec<PathBuf>,
    /// Measured requests of a sequential mode (after its warm-up).
    #[arg(long, default_value_t = 2000)]
    pub requests: u32,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Send this file as every request body (the streaming mode too: it
    /// streams when the file's JSON says `"stream": true`), instead of a
    /// short built-in chat request.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Content chunks the server streams per answer.
    #[arg(long, default_value_t = STREAM_CHUNKS)]
    pub chunks: usize,
    /// Milliseconds the server waits between a stream's chunks.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
}

struct Target {
    addr: SocketAddr,
    host: String,
    name: ServerName<'static>,
    tls: TlsConnector,
    /// The non-streaming and the streaming request body.
    bodies: [Bytes; 2],
    chunks: usize,
    delay: Duration,
}

pub fn run(args: &ProxyClientArgs) -> Result<()> {
    let bodies = match &args.body_file {
        Some(path) => {
            let body = Bytes::from(
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            );
            [body.clone(), body]
        }
        None => [Bytes::from_static(BODY), Bytes::from_static(STREAM_BODY)],
    };
    let target = Arc::new(Target {
        addr: args.addr,
        host: args.host.clone(),
        name: ServerName::try_from(args.host.clone())
            .with_context(|| format!("`{}` is not a server name", args.host))?,
        tls: TlsConnector::from(tls_config(&args.cas)?),
        bodies,
        chunks: args.chunks,
        delay: Duration::from_millis(args.chunk_delay_ms),
    });
    // One thread: the client is pinned to one CPU anyway.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client's runtime")?;
    let result = runtime.block_on(async {
        match args.mode {
            Mode::Latency => latency(&target, args.requests).await,
            Mode::Stream => stream(&target, args.requests).await,
            Mode::Load => load(target.clone(), args.clients, args.seconds, false).await,
            Mode::StreamLoad => load(target.clone(), args.clients, args.seconds, true).await,
        }
    })?;
    println!("{result}");
    Ok(())
}

fn tls_config(cas: &[PathBuf]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for path in cas {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("trusting {}", path.display()))?;
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("configuring TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // What the Python and Node SDKs' HTTP/1.1 stacks offer.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    tcp.set_nodelay(true)?;
    let tls = target
        .tls
        .connect(target.name.clone(), tcp)
        .await
        .with_context(|| format!("TLS handshake with {} at {}", target.host, target.addr))?;
    let (sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Times from sending the request: to the first body byte, to the end.
struct Timing {
    first: Duration,
    last: Duration,
    /// Per SSE event after the first: how much later than the server's pace
    /// (`delay` apart from the first) it arrived.
    late: Vec<Duration>,
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    stream: bool,
) -> Result<Timing> {
    let request = Request::post(PATH)
        .header(HOST, &target.host)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, "Bearer sk-bench-not-a-key")
        .header(USER_AGENT, "modelgate-bench")
        .header(CHUNKS_HEADER, target.chunks)
        .header(DELAY_HEADER, target.delay.as_millis() as u64)
        .body(Full::new(target.bodies[usize::from(stream)].clone()))?;
    sender.ready().await.context("the connection closed")?;
    let start = Instant::now();
    let timed = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut first = None;
        let mut late = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) else {
                continue;
            };
            let now = start.elapsed();
            let first = *first.get_or_insert(now);
            if stream {
                // Content event `i` says `token{i}`; the server sends it
                // `i × delay` after the first. Events ready together may
                // share a frame: each is as late as the frame that brought
                // it. (Keyed by content, not position: the proxy hides the
                // usage event it asked for.)
                for event in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    if let Some(i) = token_index(event).filter(|&i| i > 0) {
                        let due = first + target.delay * i;
                        late.push(now.saturating_sub(due));
                    }
                }
            }
        }
        let last = start.elapsed();
        if !status.is_success() {
            bail!("HTTP {status}");
        }
        Ok(Timing {
            first: first.unwrap_or(last),
            last,
            late,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, timed)
        .await
        .with_context(|| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
}

/// `count` sequential exchanges on one connection, after `warm_up` more.
async fn sequential(
    target: &Target,
    warm_up: u32,
    count: u32,
    stream: bool,
) -> Result<Vec<Timing>> {
    let mut sender = connect(target).await?;
    for i in 0..warm_up {
        exchange(&mut sender, target, stream)
            .await
            .with_context(|| format!("warm-up request #{i}"))?;
    }
    let mut timings = Vec::with_capacity(count as usize);
    for i in 0..count {
        let timing = exchange(&mut sender, target, stream)
            .await
            .with_context(|| format!("request #{i}"))?;
        timings.push(timing);
    }
    Ok(timings)
}

async fn latency(target: &Target, requests: u32) -> Result<serde_json::Value> {
    let timings = sequential(target, WARM_UP, requests, false).await?;
    let last = micros(timings.iter().map(|t| t.last));
    Ok(json!({
        "mode": "latency",
        "completed": WARM_UP + requests,
        "errors": 0,
        "p50_us": percentile(&last, 0.50),
        "p99_us": percentile(&last, 0.99),
    }))
}

async fn stream(target: &Target, requests: u32) -> Result<serde_json::Value> {
    let timings = sequential(target, STREAM_WARM_UP, requests, true).await?;
    let first = micros(timings.iter().map(|t| t.first));
    let last = micros(timings.iter().map(|t| t.last));
    let late = micros(timings.iter().flat_map(|t| t.late.iter().copied()));
    Ok(json!({
        "mode": "stream",
        "completed": STREAM_WARM_UP + requests,
        "errors": 0,
        "first_p50_us": percentile(&first, 0.50),
        "first_p99_us": percentile(&first, 0.99),
        "last_p50_us": percentile(&last, 0.50),
        "last_p99_us": percentile(&last, 0.99),
        "late_p50_us": percentile(&late, 0.50),
        "late_p99_us": percentile(&late, 0.99),
        "late_max_us": late.last().copied().unwrap_or(f64::NAN),
    }))
}

async fn load(
    target: Arc<Target>,
    clients: u32,
    seconds: u64,
    stream: bool,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(one_client(target.clone(), deadline, stream));
    }
    let (mut completed, mut errors, mut first_error) = (0u64, 0u64, None);
    while let Some(result) = tasks.join_next().await {
        let client = result.context("a client task panicked")?;
        completed += client.completed;
        errors += client.errors;
        first_error = first_error.or(client.first_error);
    }
    Ok(json!({
        "mode": if stream { "stream-load" } else { "load" },
        "completed": completed,
        "errors": errors,
        "first_error": first_error,
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

struct ClientTally {
    completed: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Requests back to back on one connection until `deadline`; after an
/// error, a new connection (as an SDK's pool would).
async fn one_client(target: Arc<Target>, deadline: Instant, stream: bool) -> ClientTally {
    let mut tally = ClientTally {
        completed: 0,
        errors: 0,
        first_error: None,
    };
    let mut sender = None;
    while Instant::now() < deadline {
        let result = async {
            if sender.is_none() {
                sender = Some(connect(&target).await?);
            }
            let conn = sender.as_mut().expect("connected above");
            exchange(conn, &target, stream).await
        }
        .await;
        match result {
            Ok(_) => tally.completed += 1,
            Err(err) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{err:#}"));
                sender = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

/// `i` of the `token{i}` a content event of the stand-in carries.
fn token_index(event: &[u8]) -> Option<u32> {
    let at = event.windows(5).position(|w| w == b"token")? + 5;
    let digits = event[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&event[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn micros(durations: impl Iterator<Item = Duration>) -> Vec<f64> {
    let mut values: Vec<f64> = durations.map(|d| d.as_secs_f64() * 1e6).collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_events_say_their_index() {
        let event = br#"data: {"choices":[{"delta":{"content":"token17 "}}]}"#;
        assert_eq!(token_index(event), Some(17));
        assert_eq!(token_index(b"data: [DONE]"), None);
        assert_eq!(token_index(b"data: token"), None);
    }

    #[test]
    fn nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
