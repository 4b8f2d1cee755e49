//! `/metrics` over HTTP, in the format the scraper asks for: OpenMetrics
//! when its `Accept` prefers it (Prometheus does), else Prometheus text
//! 0.0.4 — each body written by `prometheus-client`'s encoder for that
//! format, so a parser of either keeps every family's type.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    Request, Response,
    body::Bytes,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, VARY, WWW_AUTHENTICATE},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::{prometheus_text, text};
use tokio::net::TcpListener;
use tracing::warn;

use super::Metrics;

/// The body formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0: counters' families without `_total`, `# EOF`.
    OpenMetrics,
    /// Prometheus text 0.0.4: counters' families named with `_total`.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The format for an `Accept` header: the media range with the highest
/// `q` that we serve (the first of equals), as Prometheus's own servers
/// negotiate; text 0.0.4 without one.
pub fn negotiate(accept: Option<&str>) -> Format {
    let mut best: Option<(f32, Format)> = None;
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut q, mut version) = (1.0_f32, None);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "q" => q = value.parse().unwrap_or(0.0),
                "version" => version = Some(value.to_string()),
                _ => {}
            }
        }
        let format = match media.as_str() {
            // 0.0.1 and 1.0.0 are the same text for what we write.
            "application/openmetrics-text"
                if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) =>
            {
                Format::OpenMetrics
            }
            "text/plain" | "text/*" | "*/*" => Format::Text,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, format)| format)
}

impl Metrics {
    /// The registry in `format`, with the counts kept elsewhere read now.
    pub(super) fn render(&self, format: Format) -> String {
        self.refresh();
        let mut body = String::new();
        let encoded = match format {
            Format::OpenMetrics => text::encode(&mut body, &self.registry),
            Format::Text => prometheus_text::encode(&mut body, &self.registry),
        };
        if let Err(err) = encoded {
            warn!(error = %err, "cannot encode metrics");
        }
        body
    }
}

#[derive(Debug, thiserror::Error)]
#[error("binding the metrics listener {addr}; pick another with --metrics-addr")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Serves `/metrics` on `addr` (port 0: any free port), to scrapers that
/// send `token` as a bearer token when one is set; returns the address
/// bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    token: Option<String>,
) -> Result<SocketAddr, BindError> {
    let token: Option<Arc<str>> = token.map(Into::into);
    let bind_error = |source| BindError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, token) = (metrics.clone(), token.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (metrics, token) = (metrics.clone(), token.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(respond(
                            &metrics,
                            token.as_deref(),
                            &request,
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

/// Whether `request` carries `Authorization: Bearer <token>`, compared in
/// time that does not depend on where a guess goes wrong.
fn authorized<B>(request: &Request<B>, token: &str) -> bool {
    let Some(sent) = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (sent, token) = (sent.trim().as_bytes(), token.as_bytes());
    sent.len() == token.len() && sent.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

fn respond<B>(
    metrics: &Metrics,
    token: Option<&str>,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let response = if token.is_some_and(|token| !authorized(request, token)) {
        Response::builder()
            .status(401)
            .header(WWW_AUTHENTICATE, "Bearer")
            .body(Full::new(Bytes::from_static(
                b"send the token of metrics_token_file as `Authorization: Bearer <token>`\n",
            )))
    } else if request.uri().path() == "/metrics" {
        let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
        let format = negotiate(accept);
        Response::builder()
            .header(CONTENT_TYPE, format.content_type())
            .header(VARY, "accept")
            .body(Full::new(Bytes::from(metrics.render(format))))
    } else {
        Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"try /metrics\n")))
    };
    response.expect("static parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_serves_what_the_scraper_prefers() {
        for (accept, want) in [
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (
                Some("text/plain;version=0.0.4;q=1.0,*/*;q=0.1"),
                Format::Text,
            ),
            // Prometheus 2.x.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            // Prometheus 3.x.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                     application/openmetrics-text;version=0.0.1;q=0.5,text/plain;\
                     version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,\
                     */*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
            // A version we do not write.
            (
                Some("application/openmetrics-text;version=2.0.0"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Format::Text,
            ),
            (Some("application/json"), Format::Text),
        ] {
            assert_eq!(negotiate(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn each_format_names_counters_its_own_way() {
        let metrics = Metrics::new().with_a_series_in_every_family();
        let text = metrics.render(Format::Text);
        assert!(
            text.contains("# TYPE modelgate_requests_total counter\n"),
            "0.0.4 types the `_total` family: {text}"
        );
        assert!(
            text.contains("# TYPE modelgate_kernel_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "no `# EOF` in 0.0.4: {text}");
        let open = metrics.render(Format::OpenMetrics);
        assert!(
            open.contains("# TYPE modelgate_requests counter\n"),
            "OpenMetrics types the family without `_total`: {open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
