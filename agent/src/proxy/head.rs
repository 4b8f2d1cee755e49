//! What a request's head says: the host it asks for, its headers as one
//! value, and the headers that may be passed on.

use std::{sync::Arc, time::Instant};

use http::{HeaderMap, Response, StatusCode, header};

use super::{
    ConnInfo, Shared,
    conn::Conn,
    credentials,
    forward::{Answer, ProxyBody, answer},
};
use crate::{
    audit::{AuditRecord, Handling, Outcome},
    providers::{Family, Refusal},
};

/// The request's host, checked against its connection's (see
/// [`admitted_host`]); a mismatch is alerted, recorded and answered 421.
#[expect(
    clippy::too_many_arguments,
    reason = "the request's context, shared by both request paths"
)]
pub(super) fn admit(
    shared: &Shared,
    conn: &Conn,
    scheme: &str,
    host: &Arc<str>,
    parts: &http::request::Parts,
    mut audit: AuditRecord,
    started: Instant,
    family: Family,
) -> Result<(Arc<str>, AuditRecord), Box<Response<ProxyBody>>> {
    let asked = requested_host(parts);
    match admitted_host(&conn.info, scheme, host, asked.as_deref()) {
        Ok(host) => {
            audit.host = Some(host.to_string());
            Ok((host, audit))
        }
        Err(message) => {
            shared.fronting_alert(&conn.info, asked.as_deref().unwrap_or(""), &message);
            audit.decision = Handling::Refused;
            let why = Answer {
                refusal: Refusal::Policy,
                status: StatusCode::MISDIRECTED_REQUEST,
                outcome: Outcome::HostMismatch,
                message: &message,
            };
            Err(Box::new(answer(shared, audit, started, family, why)))
        }
    }
}

/// The request target upstream: the normalised path and the query — less
/// an app's `key=` where a managed credential replaces it.
pub(super) fn upstream_target(path: &str, query: Option<&str>, strip_query_key: bool) -> String {
    // A Gemini key in the query string is the app's: a managed credential
    // replaces it in the headers, so the query must not carry it on.
    if strip_query_key {
        return credentials::strip_query_key(path, query);
    }
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    }
}

/// `host[:port]` of the original destination, as the Host header names it.
pub(super) fn upstream_authority(conn: &Conn, scheme: &str, host: &str) -> String {
    let port = conn.destination.port();
    let default_port = if scheme == "https" { 443 } else { 80 };
    if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// The host a request may go to: the one its connection was admitted for
/// (over TLS, the SNI), so one connection cannot front for another host.
/// Plain HTTP has no SNI: there the Host itself must be one the provider
/// allows (any name, for address-only self-hosted providers).
pub(super) fn admitted_host(
    info: &ConnInfo,
    scheme: &str,
    connection_host: &Arc<str>,
    asked: Option<&str>,
) -> Result<Arc<str>, String> {
    let Some(asked) = asked else {
        return Ok(connection_host.clone());
    };
    if asked.eq_ignore_ascii_case(connection_host) {
        return Ok(connection_host.clone());
    }
    if scheme == "http" && (info.hosts.is_empty() || info.hosts.iter().any(|h| h.matches(asked))) {
        return Ok(asked.to_ascii_lowercase().into());
    }
    Err(format!(
        "modelgate: this connection was admitted for `{connection_host}` (rule `{}`); a request for `{asked}` on it is refused",
        info.rule
    ))
}

/// The host a request names, without a port.
pub(super) fn requested_host(parts: &http::request::Parts) -> Option<String> {
    let raw = parts
        .uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.parse::<http::uri::Authority>()
                        .map(|a| a.host().to_string())
                        .unwrap_or_else(|_| v.to_string())
                })
        })?;
    Some(raw.trim_matches(['[', ']']).to_string())
}

/// Every line of a header joined with `,` (RFC 9110 §5.3), or `None`.
pub(super) fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    let lines: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// Headers minus the hop-by-hop ones, which describe one connection and
/// must not be passed on (RFC 9110 §7.6.1).
pub(super) fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ] {
        out.remove(name);
    }
    for name in listed {
        out.remove(name.as_str());
    }
    out
}
