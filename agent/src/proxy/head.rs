//! What a request's head says: the host it asks for, its headers as one
//! value, and the headers that may be passed on.

use std::sync::Arc;

use http::{HeaderMap, header};

use super::ConnInfo;

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
