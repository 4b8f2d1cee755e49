//! The local certificate authority that signs the proxy's leaf certificates.
//!
//! Created on first start in the state directory (key mode 0600). An
//! operator may replace both files with an enterprise CA of their own.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca-key.pem";
/// Leaf certificates minted and kept; the oldest are dropped past this.
const LEAF_CACHE: usize = 4096;
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// One key for every leaf: generating a key per host costs more than the
    /// signature, and the leaves are only ever served by this process.
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

/// The local CA could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{doing} {}", .path.display())]
    File {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA key {} is readable by others (mode {mode:o}); run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("{doing} {}: replace it, or remove both CA files to have a new CA made", .path.display())]
    Parse {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("`{0}` is not a DNS name")]
    NotDnsName(String, #[source] rcgen::Error),
    #[error("signing a leaf certificate for {0}")]
    Sign(String, #[source] rcgen::Error),
    #[error("{0}")]
    Crypto(&'static str, #[source] rcgen::Error),
    #[error("loading the leaf key into rustls")]
    LeafKey(#[source] rustls::Error),
}

type Result<T, E = CaError> = std::result::Result<T, E>;

fn file_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CaError {
    let path = path.to_path_buf();
    move |source| CaError::File {
        doing,
        path,
        source,
    }
}

fn parse_error(doing: &'static str, path: &Path) -> impl FnOnce(rcgen::Error) -> CaError {
    let path = path.to_path_buf();
    move |source| CaError::Parse {
        doing,
        path,
        source,
    }
}

pub fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join(CERT_FILE), state_dir.join(KEY_FILE))
}

impl Ca {
    /// Loads the CA from `state_dir`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Ca> {
        let (cert_path, key_path) = paths(state_dir);
        if !cert_path.exists() && !key_path.exists() {
            create(&cert_path, &key_path)?;
        }
        let cert_pem = fs::read_to_string(&cert_path)
            .map_err(file_error("reading the CA certificate", &cert_path))?;
        let key_pem =
            fs::read_to_string(&key_path).map_err(file_error("reading the CA key", &key_path))?;
        let mode = fs::metadata(&key_path)
            .map_err(file_error("reading the mode of the CA key", &key_path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyExposed {
                path: key_path,
                mode,
            });
        }
        let key =
            KeyPair::from_pem(&key_pem).map_err(parse_error("parsing the CA key", &key_path))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(parse_error("parsing the CA certificate", &cert_path))?;
        Ok(Ca {
            cert_pem,
            issuer,
            leaf_key: KeyPair::generate()
                .map_err(|e| CaError::Crypto("generating the leaf key", e))?,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `host` (a DNS name or an IP address), minted once
    /// and cached.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>> {
        let mut leaves = self.leaves.lock().expect("leaf cache poisoned");
        if let Some(leaf) = leaves.get(host) {
            return Ok(leaf.clone());
        }
        let leaf = Arc::new(self.mint(host)?);
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(host.to_string(), leaf.clone());
        Ok(leaf)
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey> {
        let mut params = CertificateParams::default();
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.try_into()
                    .map_err(|e| CaError::NotDnsName(host.to_string(), e))?,
            ),
        };
        params.subject_alt_names = vec![san];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host.to_string());
        // Backdated a little: client clocks drift.
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| CaError::Sign(host.to_string(), e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let signing_key = any_supported_type(&key).map_err(CaError::LeafKey)?;
        Ok(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            signing_key,
        ))
    }
}

fn create(cert_path: &Path, key_path: &Path) -> Result<()> {
    if let Some(dir) = cert_path.parent() {
        fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    }
    let key = KeyPair::generate().map_err(|e| CaError::Crypto("generating the CA key", e))?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let host = fs::read_to_string("/etc/hostname").unwrap_or_default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("modelgate local CA {}", host.trim())
            .trim()
            .to_string(),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "modelgate");
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| CaError::Crypto("self-signing the CA certificate", e))?;
    // The key is written 0600 from the first byte: never briefly readable.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_path)
        .map_err(file_error("creating the CA key", key_path))?;
    file.write_all(key.serialize_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(file_error("writing the CA key", key_path))?;
    fs::write(cert_path, cert.pem())
        .map_err(file_error("writing the CA certificate", cert_path))?;
    // Public, unlike the rest of the state directory (the agent's umask
    // is 027): every runtime that must trust the CA reads it.
    fs::set_permissions(cert_path, fs::Permissions::from_mode(0o644))
        .map_err(file_error("making readable", cert_path))?;
    tracing::info!(cert = %cert_path.display(), "created the local CA");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_loads_and_mints() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let (cert, key) = paths(dir.path());
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "CA key must be 0600"
        );
        assert!(
            fs::read_to_string(&cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        let a = ca.leaf("api.openai.com").unwrap();
        let b = ca.leaf("api.openai.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        ca.leaf("127.0.0.9").expect("IP SANs work");
        // A second start loads the same CA.
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn refuses_a_world_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        let (_, key) = paths(dir.path());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ca::load_or_create(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
