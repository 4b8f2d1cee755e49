//! The agent's outgoing connections (upstream model APIs, alert webhooks,
//! OTLP): trust roots — the system's, plus an optional extra CA file.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use tracing::warn;

/// The trust roots could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("configuring TLS versions")]
    Versions(#[source] rustls::Error),
    #[error("reading the {what} CA file {}", .path.display())]
    Read {
        what: String,
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("adding a CA from {}: give a PEM file of CA certificates", .path.display())]
    Add {
        path: std::path::PathBuf,
        #[source]
        source: rustls::Error,
    },
}

type Result<T, E = TrustError> = std::result::Result<T, E>;

/// A TLS client config over `roots(extra_ca, what)` offering `alpn`.
pub fn client_config(
    extra_ca: Option<&Path>,
    what: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TrustError::Versions)?
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
        let read = |source| TrustError::Read {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        for cert in certs {
            roots.add(cert).map_err(|source| TrustError::Add {
                path: path.to_path_buf(),
                source,
            })?;
        }
    } else if added == 0 {
        warn!("no system trust roots found; {what} TLS will fail (install ca-certificates)");
    }
    Ok(roots)
}
