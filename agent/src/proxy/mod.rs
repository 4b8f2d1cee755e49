//! The local policy proxy: redirected connections arrive here; it finds
//! where each was going and who made it, terminates TLS with a leaf minted
//! for the requested name, audits every request and forwards it.

pub mod ca;
mod conn;
mod credentials;
mod forward;
mod govern;
mod head;
mod in_flight;
mod limits;
mod observed;
mod origin;
mod passthrough;
mod stream_usage;
mod token_estimate;
mod upload;
mod upstream;
mod websocket;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use agent_common::{Redirect, action};
use aya::maps::{HashMap as BpfHashMap, MapData};
use hyper_util::rt::TokioIo;
use rustls::{ServerConfig, server::Acceptor};
pub use token_estimate::release_unused as release_unused_tokenizers;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinSet,
};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use self::{ca::Ca, conn::Conn, upstream::Upstreams};
pub use self::{
    conn::ConnInfo,
    limits::{ClientLimits, UpstreamTimeouts},
    origin::Origins,
};
use crate::{
    alerts::{Alert, Alerts, Severity},
    audit::{AuditFailure, AuditLog, AuditRecord, Destination, Handling, Outcome},
    budget::Budgets,
    identity::Identity,
    metrics::HandshakeFailure,
    policy::{PolicyState, StorePrompts},
};

pub struct ProxySettings {
    pub port: u16,
    pub state_dir: PathBuf,
    pub upstream_ca: Option<PathBuf>,
    pub store_prompts: StorePrompts,
    pub limits: ClientLimits,
    pub upstream_timeouts: UpstreamTimeouts,
    pub audit_failure: AuditFailure,
}

pub struct Describe {
    pub redirect: Redirect,
    pub reply: oneshot::Sender<ConnInfo>,
}

/// What the proxy asks of the daemon's task (which owns the kernel maps).
#[derive(Debug)]
pub enum Control {
    /// Block this process's model connects in the kernel until `until`.
    Quarantine {
        tgid: u32,
        until: std::time::Instant,
        rule: String,
    },
}

/// The policy the proxy decides requests with, swapped whole on reload.
pub type SharedPolicy = Arc<std::sync::RwLock<Arc<PolicyState>>>;

/// What the proxy shares with the rest of the agent.
pub struct ProxyLinks {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub audit: AuditLog,
    pub usage: crate::usage::UsageLog,
    pub alerts: Alerts,
    pub describe: mpsc::Sender<Describe>,
    pub control: mpsc::Sender<Control>,
    pub policy: SharedPolicy,
    pub budgets: Arc<Mutex<Budgets>>,
    pub live: Arc<crate::live::Live>,
    /// OTLP export, when configured.
    pub otlp: Option<crate::otlp::OtlpHandle>,
}

pub(crate) struct Shared {
    origins: Origins,
    ca: Ca,
    server_configs: Mutex<HashMap<String, Arc<ServerConfig>>>,
    upstreams: Upstreams,
    audit: AuditLog,
    usage: crate::usage::UsageLog,
    metrics: Arc<crate::metrics::Metrics>,
    alerts: Alerts,
    describe: mpsc::Sender<Describe>,
    control: mpsc::Sender<Control>,
    policy: SharedPolicy,
    budgets: Arc<Mutex<Budgets>>,
    credentials: credentials::Credentials,
    store_prompts: StorePrompts,
    live: Arc<crate::live::Live>,
    /// Client connections accepted; also each one's id in the audit.
    connections: Arc<AtomicU64>,
    limits: ClientLimits,
    upstream_timeouts: UpstreamTimeouts,
    audit_failure: AuditFailure,
    /// One permit per client connection being served.
    slots: Arc<Semaphore>,
    /// Connections closed at once because every slot was taken.
    refused: Arc<AtomicU64>,
    otlp: Option<crate::otlp::OtlpHandle>,
}

pub struct Proxy {
    pub port: u16,
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

/// The proxy could not start, or could not make a TLS server for a host.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("binding the proxy to 127.0.0.1:{0}; pick another with --proxy-port")]
    Bind(u16, #[source] std::io::Error),
    #[error("configuring TLS versions")]
    Tls(#[source] rustls::Error),
}

type Result<T, E = ProxyError> = std::result::Result<T, E>;

impl Proxy {
    /// Binds 127.0.0.1:port and [::1]:port (port 0: the same free port on
    /// both) and prepares TLS; nothing is served until `serve`.
    pub async fn bind(
        settings: &ProxySettings,
        redirect_map: BpfHashMap<MapData, u32, Redirect>,
        links: ProxyLinks,
    ) -> Result<Proxy> {
        let ca = Ca::load_or_create(&settings.state_dir)?;
        let tls = upstream::client_config(settings.upstream_ca.as_deref())?;
        let (port, listeners) = bind_loopback(settings.port).await?;
        Ok(Proxy {
            port,
            listeners,
            shared: Arc::new(Shared {
                origins: Origins::new(redirect_map),
                ca,
                server_configs: Mutex::new(HashMap::new()),
                upstreams: Upstreams::new(tls),
                audit: links.audit,
                usage: links.usage,
                metrics: links.metrics,
                alerts: links.alerts,
                describe: links.describe,
                control: links.control,
                policy: links.policy,
                budgets: links.budgets,
                credentials: credentials::Credentials::default(),
                store_prompts: settings.store_prompts,
                live: links.live,
                connections: Arc::new(AtomicU64::new(0)),
                limits: settings.limits,
                upstream_timeouts: settings.upstream_timeouts,
                audit_failure: settings.audit_failure,
                slots: Arc::new(Semaphore::new(settings.limits.max_connections)),
                refused: Arc::new(AtomicU64::new(0)),
                otlp: links.otlp,
            }),
        })
    }

    /// Where it listens, for `modelgate status`.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Connections refused because `max_connections` were being served.
    pub fn refused(&self) -> Arc<AtomicU64> {
        self.shared.refused.clone()
    }

    /// Client connections accepted so far, counted as they come.
    pub fn connections(&self) -> Arc<AtomicU64> {
        self.shared.connections.clone()
    }

    /// Accepts until `shutdown` flips; then gives connections in flight
    /// `grace` to finish and cancels the rest (their records say so).
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let mut listeners = self.listeners.into_iter();
        let first = listeners
            .next()
            .expect("bind returns at least one listener");
        let second = listeners.next();
        let mut conns = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = first.accept() => accepted,
                accepted = accept_or_pend(second.as_ref()) => accepted,
                _ = shutdown.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Past the limit the connection is closed at once: a
                    // flood of clients costs a count, not memory.
                    match self.shared.slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let shared = self.shared.clone();
                            conns.spawn(async move {
                                handle(shared, stream, peer).await;
                                drop(slot);
                            });
                        }
                        Err(_) => self.shared.refuse_over_limit(peer),
                    }
                }
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %err, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(first);
        drop(second);
        let deadline = tokio::time::Instant::now() + grace;
        while !conns.is_empty() {
            match tokio::time::timeout_at(deadline, conns.join_next()).await {
                Ok(_) => {}
                Err(_) => {
                    info!(
                        connections = conns.len(),
                        "cancelling proxied connections still open"
                    );
                    conns.shutdown().await;
                }
            }
        }
    }
}

async fn accept_or_pend(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn bind_loopback(port: u16) -> Result<(u16, Vec<TcpListener>)> {
    let v4 = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
        .map_err(|err| ProxyError::Bind(port, err))?;
    let port = v4
        .local_addr()
        .map_err(|err| ProxyError::Bind(port, err))?
        .port();
    let mut listeners = vec![v4];
    match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)).await {
        Ok(v6) => listeners.push(v6),
        Err(err) => warn!(
            error = %err,
            "cannot bind the proxy on [::1]:{port}; IPv6 model traffic under redirect will be refused"
        ),
    }
    Ok((port, listeners))
}

async fn handle(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let connection = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(redirect) = shared.origins.take(peer) else {
        // Not sent here by the kernel: someone dialled the port by hand.
        // The proxy is not an open relay.
        warn!(%peer, "refused a connection to the proxy port that the kernel did not redirect");
        shared.record(refusal(
            connection,
            Outcome::NoRedirectRecord,
            format!("{peer} connected to the proxy port directly; only redirected connections are served"),
            Identity::default(),
        ));
        return;
    };
    let (reply, answer) = oneshot::channel();
    if shared
        .describe
        .send(Describe { redirect, reply })
        .await
        .is_err()
    {
        return; // shutting down
    }
    let Ok(info) = answer.await else { return };
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(Conn {
        id: connection,
        destination: SocketAddr::new(agent_common::from_v6_bytes(redirect.addr), redirect.port),
        info,
    });

    let mut first = [0u8; 1];
    // First bytes and the TLS handshake get the same time as a request's
    // headers: a client that connects and says nothing holds a slot no
    // longer than one that stalls mid-request.
    let peeked = tokio::time::timeout(shared.limits.header_timeout, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        debug!(%peer, "client sent nothing; closing");
        return;
    }
    // 0x16: a TLS handshake record. Anything else is plain HTTP (self-hosted
    // servers on http://).
    if first[0] != 0x16 {
        forward::serve(shared, conn, TokioIo::new(stream), "http", None).await;
        return;
    }
    if redirect.action == action::PASSTHROUGH {
        passthrough::run(shared, conn, stream).await;
        return;
    }
    let start = match tokio::time::timeout(
        shared.limits.header_timeout,
        LazyConfigAcceptor::new(Acceptor::default(), stream),
    )
    .await
    {
        Ok(Ok(start)) => start,
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "bad ClientHello");
            shared
                .metrics
                .tls_handshake_failed(HandshakeFailure::ClientHello);
            return;
        }
        Err(_) => {
            shared
                .metrics
                .tls_handshake_failed(HandshakeFailure::Timeout);
            return;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let host = match upstream_host(&conn.info, sni.as_deref(), conn.destination.ip()) {
        Ok(host) => host,
        Err(message) => {
            warn!(%peer, %message, "refused a redirected connection");
            shared
                .metrics
                .tls_handshake_failed(HandshakeFailure::HostMismatch);
            shared.fronting_alert(&conn.info, sni.as_deref().unwrap_or(""), &message);
            shared.record(refusal(
                connection,
                Outcome::HostMismatch,
                message,
                conn.info.identity.clone(),
            ));
            return;
        }
    };
    let config = match shared.server_config(&host) {
        Ok(config) => config,
        Err(err) => {
            warn!(%host, error = %crate::errors::chain(&err), "cannot mint a certificate");
            shared
                .metrics
                .tls_handshake_failed(HandshakeFailure::Certificate);
            return;
        }
    };
    match start.into_stream(config).await {
        Ok(tls) => forward::serve(shared, conn, TokioIo::new(tls), "https", Some(host)).await,
        Err(err) => {
            shared.metrics.tls_handshake_failed(handshake_failure(&err));
            // Most often a client that does not trust the CA (or pins).
            info!(%peer, %host, error = %err, exe = %conn.info.identity.who(),
                "TLS handshake with the client failed; does it trust the modelgate CA?");
            let who = conn.info.identity.who();
            let mut alert = Alert::new(
                "ca-untrusted",
                Severity::Warning,
                format!(
                    "{who} (pid {}) refused the proxy's certificate for {host} ({err}): it does not \
                     trust the modelgate CA, or pins certificates; trust the CA for it, or use \
                     passthrough",
                    conn.info.identity.tgid
                ),
            );
            alert.rule = Some(conn.info.rule.clone());
            alert.provider = Some(conn.info.provider.clone());
            alert.host = Some(host);
            alert.identity = Some(conn.info.identity.clone());
            shared.alerts.send(alert.with_id());
        }
    }
}

/// Why the handshake after the ClientHello failed: an alert from the
/// client is its refusal of our certificate.
fn handshake_failure(err: &std::io::Error) -> HandshakeFailure {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::ClientRejected,
        _ => HandshakeFailure::Other,
    }
}

/// The name to present and to ask upstream for: the client's SNI when it
/// is one of the provider's hosts, else a refusal — the proxy must not
/// become a way to reach a host other than the one the kernel matched.
fn upstream_host(info: &ConnInfo, sni: Option<&str>, ip: IpAddr) -> Result<String, String> {
    match sni {
        Some(sni) if info.hosts.is_empty() || info.hosts.iter().any(|h| h.matches(sni)) => {
            Ok(sni.to_ascii_lowercase())
        }
        Some(sni) => Err(format!(
            "the client asked for `{sni}`, which is not a host of provider `{}` whose address {ip} it connected to",
            info.provider
        )),
        None => Ok(info.fallback_host.clone().unwrap_or_else(|| ip.to_string())),
    }
}

impl Shared {
    /// Whether a request must be refused because its audit record could
    /// not be written now (`audit_failure: block`).
    pub(crate) fn audit_blocked(&self) -> bool {
        self.audit_failure == AuditFailure::Block
            && self
                .audit
                .health
                .failing
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every audit record goes through here: metrics and the usage store
    /// see exactly what the audit trail gets.
    pub(crate) fn record(&self, audit: AuditRecord) {
        self.metrics.observe(&audit);
        self.live.request(&audit);
        self.usage.send(crate::usage::Row::from_audit(&audit));
        if let Some(otlp) = &self.otlp {
            otlp.send(&audit);
        }
        self.audit.send(audit);
    }

    /// A redirected client named another host than the one its connection
    /// was matched for: domain fronting, or an app using the proxy to reach
    /// a host it could not reach directly. Refused by the caller; raised
    /// here.
    pub(crate) fn fronting_alert(&self, info: &ConnInfo, named: &str, message: &str) {
        let mut alert = Alert::new(
            "domain-fronting",
            Severity::High,
            format!(
                "{} (pid {}) named `{named}` on a connection to provider `{}`; refused: {message}",
                info.identity.who(),
                info.identity.tgid,
                info.provider
            ),
        );
        alert.rule = Some(info.rule.clone());
        alert.provider = Some(info.provider.clone());
        alert.host = Some(named.to_string());
        alert.identity = Some(info.identity.clone());
        self.alerts.send(alert.with_id());
    }

    fn refuse_over_limit(&self, peer: SocketAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            warn!(
                %peer,
                refused_total = refused,
                max_connections = self.limits.max_connections,
                "refused client connections: the proxy is serving its maximum; raise \
                 client_limits.max_connections if this load is legitimate"
            );
        }
    }

    fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>> {
        if let Some(config) = self.server_configs.lock().expect("poisoned").get(host) {
            return Ok(config.clone());
        }
        let leaf = self.ca.leaf(host)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(ProxyError::Tls)?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(leaf)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut configs = self.server_configs.lock().expect("poisoned");
        if configs.len() > 4096 {
            configs.clear();
        }
        configs.insert(host.to_string(), config.clone());
        Ok(config)
    }
}

fn refusal(connection: u64, outcome: Outcome, error: String, identity: Identity) -> AuditRecord {
    let mut record = AuditRecord::new(
        Handling::Refused,
        "proxy".into(),
        "unknown".into(),
        Destination {
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
        },
        "tls",
        connection,
        identity,
    );
    record.outcome = outcome;
    record.error = Some(error);
    record
}
