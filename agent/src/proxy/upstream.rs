//! The proxy's side towards the model API: connections to the original
//! destination (never a fresh DNS answer), TLS with the system's roots,
//! HTTP/2 where the server offers it, pooled per destination address.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept; a destination's client
/// unused for longer holds none and may be dropped.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Destinations kept before idle ones are swept.
const SWEEP_ABOVE: usize = 256;

/// Request bodies going upstream: whole (read and decided on) or streamed
/// (an upload, scanned piece by piece; an error aborts the request).
pub type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// One pooled client per original destination. hyper pools by host, and
/// one host has many addresses: a connection the kernel recorded to one of
/// them must be forwarded there, never over a pooled connection to
/// another (the audit names the address, and the address is what the
/// policy judged).
pub struct Upstreams {
    tls: Arc<ClientConfig>,
    /// The same trust, offering only HTTP/1.1: a WebSocket upgrade is an
    /// HTTP/1.1 exchange.
    tls_http1: Arc<ClientConfig>,
    by_destination: Mutex<HashMap<SocketAddr, (UpstreamClient, Instant)>>,
}

impl Upstreams {
    pub fn new(tls: Arc<ClientConfig>) -> Upstreams {
        let mut http1 = (*tls).clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Upstreams {
            tls,
            tls_http1: Arc::new(http1),
            by_destination: Mutex::new(HashMap::new()),
        }
    }

    /// The client whose every connection goes to `destination`.
    pub fn to(&self, destination: SocketAddr) -> UpstreamClient {
        let now = Instant::now();
        let mut clients = self.by_destination.lock().expect("upstreams poisoned");
        if clients.len() >= SWEEP_ABOVE && !clients.contains_key(&destination) {
            clients.retain(|_, (_, used)| now.duration_since(*used) < POOL_IDLE);
        }
        let (client, used) = clients.entry(destination).or_insert_with(|| {
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(256)
                .build(Connector {
                    tls: self.tls.clone(),
                    destination,
                });
            (client, now)
        });
        *used = now;
        client.clone()
    }

    /// A fresh HTTP/1.1 connection of its own to `destination`, for a
    /// session that will outlive any request (a WebSocket upgrade).
    pub async fn open_http1(&self, destination: SocketAddr, uri: Uri) -> io::Result<Upstream> {
        Connector {
            tls: self.tls_http1.clone(),
            destination,
        }
        .connect(uri)
        .await
    }
}

/// TLS to upstreams: the system's trust roots plus an optional extra CA
/// (a private model gateway, or a test's stand-in).
pub fn client_config(
    extra_ca: Option<&Path>,
) -> Result<Arc<ClientConfig>, crate::trust::TrustError> {
    crate::trust::client_config(extra_ca, "upstream", &[b"h2", b"http/1.1"])
}

/// Connects to one address whatever the URI's host resolves to now; the
/// host is the TLS server name and the Host header.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientConfig>,
    destination: SocketAddr,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Upstream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Upstream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> io::Result<Upstream> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::other("upstream URI without host"))?
            .to_string();
        let destination = self.destination;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {destination} timed out"),
                )
            })??;
        tcp.set_nodelay(true)?;
        if uri.scheme_str() != Some("https") {
            return Ok(Upstream {
                io: TokioIo::new(MaybeTls::Plain(tcp)),
                h2: false,
            });
        }
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| io::Error::other(format!("bad upstream name {host}: {e}")))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Upstream {
            io: TokioIo::new(MaybeTls::Tls(Box::new(tls))),
            h2,
        })
    }
}

pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// An upstream connection as hyper's pool sees it.
pub struct Upstream {
    io: TokioIo<MaybeTls>,
    h2: bool,
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
