//! The agent's outgoing connections (upstream model APIs, alert webhooks,
//! OTLP): trust roots — the system's, plus an optional extra CA file — and
//! the one HTTP/1.1 connection its own deliveries use.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use tracing::warn;

/// A TLS client config over `roots(extra_ca, what)` offering `alpn`.
pub fn client_config(
    extra_ca: Option<&Path>,
    what: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("configuring TLS versions")?
            .with_root_certificates(roots(extra_ca, what)?)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `what` names the connections in messages ("upstream", "webhook").
pub fn roots(extra_ca: Option<&Path>, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        warn!(%error, "skipping a system trust root");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading the {what} CA file {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing the {what} CA file {}", path.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("adding a CA from {}", path.display()))?;
        }
    } else if added == 0 {
        warn!("no system trust roots found; {what} TLS will fail (install ca-certificates)");
    }
    Ok(roots)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 connection to `host:port`, over TLS when `tls` is given:
/// what the agent's own deliveries (webhooks, OTLP) send their requests
/// on.
pub async fn connect_http1(
    host: &str,
    port: u16,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .with_context(|| format!("`{host}` is not a valid TLS name"))?;
            Box::new(
                tls.connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS with {host}:{port}"))?,
            )
        }
        None => Box::new(tcp),
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
