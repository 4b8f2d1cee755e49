//! One redirected client connection: where it was going and who opened it.

use std::net::SocketAddr;

use crate::{
    audit::{AuditRecord, Destination, Handling},
    catalog::{Api, HostPattern},
    identity::Identity,
};

/// What the agent knows about a redirected connection's process and
/// destination, answered by the daemon's task that owns the caches.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub identity: Identity,
    pub provider: String,
    pub api: Option<Api>,
    /// The provider's catalog hosts: the SNI must be one of them.
    pub hosts: Vec<HostPattern>,
    /// Name to use when the client sends no SNI (what the address was
    /// resolved from, or the provider's first host).
    pub fallback_host: Option<String>,
    pub rule: String,
}

/// One redirected client connection.
pub struct Conn {
    pub id: u64,
    pub destination: SocketAddr,
    pub info: ConnInfo,
}

impl Conn {
    /// An audit record for a request (or splice) on this connection.
    pub fn audit_record(&self, decision: Handling, scheme: &'static str) -> AuditRecord {
        AuditRecord::new(
            decision,
            self.info.rule.clone(),
            self.info.provider.clone(),
            Destination {
                ip: self.destination.ip(),
                port: self.destination.port(),
            },
            scheme,
            self.id,
            self.info.identity.clone(),
        )
    }
}
