//! What the proxy did with a request and how it ended, as the audit trail,
//! metrics, usage and OTLP name them. The JSON strings are the stable part:
//! dashboards and SIEM queries filter on them.

use serde::Serialize;

use crate::policy::decide::RefuseKind;

/// How the proxy handled the connection the request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handling {
    /// TLS terminated, the request read and audited.
    Redirect,
    /// Spliced after the ClientHello: only the name is seen.
    Passthrough,
    /// The proxy answered instead of the model.
    Refused,
}

impl Handling {
    pub fn as_str(self) -> &'static str {
        match self {
            Handling::Redirect => "redirect",
            Handling::Passthrough => "passthrough",
            Handling::Refused => "refused",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    // Refused by policy.
    Blocked,
    Quarantined,
    ModelRefused,
    ModelConflict,
    TooLarge,
    DataBlocked,
    /// A content control could not read the body as the upstream will.
    Unreadable,
    BudgetExceeded,
    CredentialError,
    /// The audit trail could not take the record, and the policy requires one.
    AuditUnavailable,
    // Refused before a request could be read.
    NoRedirectRecord,
    HostMismatch,
    BadRequest,
    ClientTimeout,
    // Ended by one side.
    UpstreamError,
    UpstreamTimeout,
    ClientDisconnected,
    /// A realtime session the upstream would not open as a WebSocket.
    UpgradeDeclined,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Blocked => "blocked",
            Outcome::Quarantined => "quarantined",
            Outcome::ModelRefused => "model_refused",
            Outcome::ModelConflict => "model_conflict",
            Outcome::TooLarge => "too_large",
            Outcome::DataBlocked => "data_blocked",
            Outcome::Unreadable => "unreadable",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::CredentialError => "credential_error",
            Outcome::AuditUnavailable => "audit_unavailable",
            Outcome::NoRedirectRecord => "no_redirect_record",
            Outcome::HostMismatch => "host_mismatch",
            Outcome::BadRequest => "bad_request",
            Outcome::ClientTimeout => "client_timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::UpgradeDeclined => "upgrade_declined",
        }
    }

    pub fn is_ok(self) -> bool {
        self == Outcome::Ok
    }
}

impl From<RefuseKind> for Outcome {
    fn from(kind: RefuseKind) -> Outcome {
        match kind {
            RefuseKind::Blocked => Outcome::Blocked,
            RefuseKind::Quarantined | RefuseKind::DataQuarantined => Outcome::Quarantined,
            RefuseKind::ModelRefused => Outcome::ModelRefused,
            RefuseKind::TooLarge => Outcome::TooLarge,
            RefuseKind::DataBlocked => Outcome::DataBlocked,
            RefuseKind::Unreadable => Outcome::Unreadable,
            RefuseKind::ModelConflict => Outcome::ModelConflict,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Handling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` is what metrics and OTLP label with, serde what the audit
    /// trail writes: they must never drift apart.
    #[test]
    fn as_str_is_the_serialised_name() {
        use Outcome::*;
        for outcome in [
            Ok,
            Blocked,
            Quarantined,
            ModelRefused,
            ModelConflict,
            TooLarge,
            DataBlocked,
            Unreadable,
            BudgetExceeded,
            CredentialError,
            AuditUnavailable,
            NoRedirectRecord,
            HostMismatch,
            BadRequest,
            ClientTimeout,
            UpstreamError,
            UpstreamTimeout,
            ClientDisconnected,
            UpgradeDeclined,
        ] {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                outcome.as_str(),
                "{outcome:?}"
            );
        }
        for handling in [Handling::Redirect, Handling::Passthrough, Handling::Refused] {
            assert_eq!(serde_json::to_value(handling).unwrap(), handling.as_str());
        }
    }

    #[test]
    fn refusals_keep_the_names_they_had() {
        assert_eq!(
            Outcome::from(RefuseKind::DataQuarantined).as_str(),
            "quarantined"
        );
        assert_eq!(
            Outcome::from(RefuseKind::ModelRefused).as_str(),
            "model_refused"
        );
    }
}
