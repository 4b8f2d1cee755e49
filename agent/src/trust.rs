//! The agent's outgoing connections (upstream model APIs, alert webhooks,
//! OTLP): trust roots — the system's, plus an optional extra CA file.

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
