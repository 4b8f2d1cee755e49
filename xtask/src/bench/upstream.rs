//! `bench proxy`'s model server: a throwaway PKI, and an OpenAI-style
//! `POST /v1/chat/completions` over TLS (ALPN h2 and http/1.1) that answers
//! at once, on a tokio runtime inside the xtask process. It counts the
//! requests, and the bodies that arrived redacted (`bench classify`).
//!
//! A streamed answer has [`STREAM_CHUNKS`] content chunks unless the request
//! says otherwise in [`CHUNKS_HEADER`], and its chunks follow each other at
//! once (a burst) or [`DELAY_HEADER`] milliseconds apart (a model-like
//! trickle). The client sets them, so one server serves every run.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{
    Method, Request, Response, StatusCode, Version,
    body::{Body, Frame, Incoming},
    header::CONTENT_TYPE,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use tokio::{net::TcpListener, runtime::Runtime};
use tokio_rustls::TlsAcceptor;

const PATH: &str = "/v1/chat/completions";
/// What the proxy puts in place of a finding it redacts: `[REDACTED:email]`.
pub const REDACTED: &str = "[REDACTED:";
/// Content chunks of a streamed answer, each its own body frame.
pub const STREAM_CHUNKS: usize = 20;
/// A request header: content chunks of the streamed answer.
pub const CHUNKS_HEADER: &str = "x-bench-chunks";
/// A request header: milliseconds between a streamed answer's chunks.
pub const DELAY_HEADER: &str = "x-bench-chunk-delay-ms";
/// Bounds on what a request may ask, so a typo cannot wedge a run.
const MAX_CHUNKS: usize = 10_000;
const MAX_DELAY_MS: u64 = 10_000;
const CHUNK_HEAD: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini""#;
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":9,"total_tokens":17}}"#;

/// A CA, and a server certificate it signed for one host name.
pub struct Pki {
    pub ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Pki {
    pub fn new(host: &str) -> Result<Pki> {
        let ca_key = KeyPair::generate().context("generating the bench CA key")?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "modelgate bench upstream CA");
        let ca_cert = ca.self_signed(&ca_key).context("signing the bench CA")?;
        let key = KeyPair::generate().context("generating the bench server key")?;
        let server = CertificateParams::new(vec![host.to_owned()])
            .with_context(|| format!("certificate parameters for {host}"))?
            .signed_by(&key, &Issuer::new(ca, ca_key))
            .with_context(|| format!("signing the bench certificate for {host}"))?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            chain: vec![server.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

/// Requests answered, by the HTTP version they arrived in; and how many of
/// them had a body holding a redaction marker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub http1: u64,
    pub http2: u64,
    pub redacted: u64,
}

impl Counts {
    pub fn total(self) -> u64 {
        self.http1 + self.http2
    }

    pub fn since(self, before: Counts) -> Counts {
        Counts {
            http1: self.http1 - before.http1,
            http2: self.http2 - before.http2,
            redacted: self.redacted - before.redacted,
        }
    }
}

#[derive(Default)]
struct Counters {
    http1: AtomicU64,
    http2: AtomicU64,
    redacted: AtomicU64,
    /// The body of the latest request (a cheap reference-counted clone).
    last_body: Mutex<Bytes>,
}

/// The running server; dropping it shuts its runtime down.
pub struct Upstream {
    _runtime: Runtime,
    counters: Arc<Counters>,
}

impl Upstream {
    /// Listens on `addr` and serves until dropped; every runtime thread is
    /// pinned to `cpu` when given.
    pub fn start(addr: SocketAddr, pki: &Pki, cpu: Option<usize>) -> Result<Upstream> {
        let mut tls =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("configuring TLS versions")?
                .with_no_client_auth()
                .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
                .context("loading the bench server certificate")?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-upstream")
            .on_thread_start(move || {
                if let Some(cpu) = cpu
                    && let Err(err) = super::client::pin_thread(cpu)
                {
                    eprintln!("bench: warning: cannot pin the upstream server to CPU {cpu}: {err}");
                }
            })
            .enable_all()
            .build()
            .context("starting the upstream server's runtime")?;
        let listener = runtime.block_on(TcpListener::bind(addr)).with_context(|| {
            format!(
                "listening on {addr} for the stand-in model server; if another server holds it \
                 (EADDRINUSE), find it with `ss -ltnp 'src {}'` and retry when it is gone",
                addr.ip()
            )
        })?;
        let counters = Arc::new(Counters::default());
        let answers = Arc::new(Answers::new());
        runtime.spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            counters.clone(),
            answers,
        ));
        Ok(Upstream {
            _runtime: runtime,
            counters,
        })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            http1: self.counters.http1.load(Ordering::SeqCst),
            http2: self.counters.http2.load(Ordering::SeqCst),
            redacted: self.counters.redacted.load(Ordering::SeqCst),
        }
    }

    /// The body of the latest request answered (empty before the first).
    pub fn last_body(&self) -> Bytes {
        self.counters
            .last_body
            .lock()
            .expect("the upstream's last-body lock is poisoned")
            .clone()
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    counters: Arc<Counters>,
    answers: Arc<Answers>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                eprintln!("bench: upstream accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, counters, answers) = (acceptor.clone(), counters.clone(), answers.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |req| answer(req, counters.clone(), answers.clone()));
            // Errors are clients going away (the load run's end); not news.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

type AnswerBody = Either<Full<Bytes>, Frames>;

async fn answer(
    req: Request<Incoming>,
    counters: Arc<Counters>,
    answers: Arc<Answers>,
) -> Result<Response<AnswerBody>, hyper::Error> {
    if req.method() != Method::POST || req.uri().path() != PATH {
        let mut not_found = Response::new(Either::Left(Full::new(Bytes::from_static(
            b"{\"error\":{\"message\":\"not found\"}}",
        ))));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return Ok(not_found);
    }
    let version = req.version();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let chunks = header(CHUNKS_HEADER).map_or(STREAM_CHUNKS, |n| (n as usize).min(MAX_CHUNKS));
    let delay = Duration::from_millis(header(DELAY_HEADER).unwrap_or(0).min(MAX_DELAY_MS));
    let body = req.into_body().collect().await?.to_bytes();
    let stream = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("stream")?.as_bool())
        .unwrap_or(false);
    let counter = if version == Version::HTTP_2 {
        &counters.http2
    } else {
        &counters.http1
    };
    if is_redacted(&body) {
        counters.redacted.fetch_add(1, Ordering::SeqCst);
    }
    *counters
        .last_body
        .lock()
        .expect("the upstream's last-body lock is poisoned") = body;
    // Last: a client that has its answer finds the counts above up to date.
    counter.fetch_add(1, Ordering::SeqCst);
    let (content_type, body) = if stream {
        (
            "text/event-stream",
            Either::Right(Frames::new(answers.events(chunks), delay)),
        )
    } else {
        (
            "application/json",
            Either::Left(Full::new(answers.completion.clone())),
        )
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("a valid header"));
    Ok(response)
}

/// `true` when a redaction marker is in `body`. Bodies are JSON, so UTF-8;
/// `str::contains` has a vectorised search for short needles, so even a
/// 32 KB body costs a few µs, next to the JSON parse above.
fn is_redacted(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|text| text.contains(REDACTED))
}

/// The answers, built once: a completion, and a stream's SSE events for
/// each chunk count asked for.
struct Answers {
    completion: Bytes,
    events: Mutex<HashMap<usize, Arc<[Bytes]>>>,
}

impl Answers {
    fn new() -> Answers {
        Answers {
            completion: Bytes::from_static(COMPLETION.as_bytes()),
            events: Mutex::new(HashMap::new()),
        }
    }

    /// `chunks` content events, the usage event, `[DONE]`.
    fn events(&self, chunks: usize) -> Arc<[Bytes]> {
        let mut cache = self
            .events
            .lock()
            .expect("the upstream's answer cache lock is poisoned");
        cache
            .entry(chunks)
            .or_insert_with(|| stream_events(chunks))
            .clone()
    }
}

fn stream_events(chunks: usize) -> Arc<[Bytes]> {
    let mut events: Vec<Bytes> = (0..chunks)
        .map(|i| {
            Bytes::from(format!(
                "data: {CHUNK_HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
            ))
        })
        .collect();
    events.push(Bytes::from(format!(
        "data: {CHUNK_HEAD},\"choices\":[],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
        chunks + 8
    )));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events.into()
}

/// A body of one frame per event: at once, nothing coalescing them here,
/// or `delay` apart, as a model writes tokens. Event `i` is due `i × delay`
/// after the first, so timer slack does not add up along the stream.
pub struct Frames {
    events: Arc<[Bytes]>,
    next: usize,
    delay: Duration,
    first: Option<tokio::time::Instant>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Frames {
    fn new(events: Arc<[Bytes]>, delay: Duration) -> Frames {
        Frames {
            events,
            next: 0,
            delay,
            first: None,
            wait: None,
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        let Some(event) = self.events.get(self.next).cloned() else {
            return Poll::Ready(None);
        };
        let first = *self.first.get_or_insert_with(tokio::time::Instant::now);
        self.next += 1;
        if !self.delay.is_zero() && self.next < self.events.len() {
            let due = first + self.delay * self.next as u32;
            self.wait = Some(Box::pin(tokio::time::sleep_until(due)));
        }
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_then_done() {
        let answers = Answers::new();
        assert_eq!(answers.events(3).len(), 5);
        let events = answers.events(STREAM_CHUNKS);
        assert_eq!(events.len(), STREAM_CHUNKS + 2);
        for event in &events[..=STREAM_CHUNKS] {
            let text = std::str::from_utf8(event).unwrap();
            let json = text.strip_prefix("data: ").unwrap().trim_end();
            serde_json::from_str::<serde_json::Value>(json).expect(text);
        }
        let usage: serde_json::Value =
            serde_json::from_str(&String::from_utf8_lossy(&events[STREAM_CHUNKS])[6..]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], STREAM_CHUNKS);
        let done = &events[STREAM_CHUNKS + 1];
        assert_eq!(&done[..], b"data: [DONE]\n\n");
        serde_json::from_slice::<serde_json::Value>(&answers.completion).unwrap();
    }

    #[test]
    fn finds_redaction_markers() {
        assert!(is_redacted(br#"{"c":"mail [REDACTED:email] now"}"#));
        assert!(!is_redacted(br#"{"c":"mail jane@example.com now"}"#));
        assert!(!is_redacted(b"[REDACTED:\xff"));
        let counts = Counts {
            http1: 5,
            http2: 1,
            redacted: 3,
        };
        let before = Counts {
            http1: 2,
            http2: 1,
            redacted: 1,
        };
        assert_eq!(
            counts.since(before),
            Counts {
                http1: 3,
                http2: 0,
                redacted: 2
            }
        );
        assert_eq!(counts.since(before).total(), 3);
    }
}
