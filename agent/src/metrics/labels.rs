//! The label sets of the agent's metric families, and the reasons a TLS
//! handshake fails.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) decision: String,
    pub(super) outcome: String,
    pub(super) workload: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TokenLabels {
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) workload: String,
    pub(super) r#type: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LatencyLabels {
    pub(super) provider: String,
    pub(super) model: String,
    pub(super) workload: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CounterLabels {
    pub(super) counter: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueLabels {
    pub(super) queue: &'static str,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MemoryLabels {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MapLabels {
    pub(super) map: &'static str,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SinkLabels {
    pub(super) sink: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SignalLabels {
    pub(super) signal: &'static str,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

/// Why a TLS handshake with a redirected client did not complete: the
/// `reason` of `modelgate_proxy_tls_handshake_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The first record was not a readable ClientHello.
    ClientHello,
    /// No ClientHello within the header timeout.
    Timeout,
    /// The SNI named a host that is not the provider's; refused.
    HostMismatch,
    /// The proxy could not mint a certificate for the host.
    Certificate,
    /// The client ended the handshake with an alert: most often it does not
    /// trust the modelgate CA, or pins certificates.
    ClientRejected,
    /// Anything else (the client went away mid-handshake, a protocol error).
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::ClientHello,
        HandshakeFailure::Timeout,
        HandshakeFailure::HostMismatch,
        HandshakeFailure::Certificate,
        HandshakeFailure::ClientRejected,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::ClientHello => "client_hello",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::HostMismatch => "host_mismatch",
            HandshakeFailure::Certificate => "certificate",
            HandshakeFailure::ClientRejected => "client_rejected",
            HandshakeFailure::Other => "other",
        }
    }
}
