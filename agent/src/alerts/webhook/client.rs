//! A webhook receiver's answers, as delivered, refused or worth retrying,
//! over one kept-alive connection (`crate::delivery`). Alerts are few and
//! strictly ordered per sink, so one connection, one request at a time, is
//! all a sink needs — no pool.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::{alerts::settings::WebhookUrl, delivery::Connection};

/// What a delivery attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the receiver has it.
    Delivered,
    /// A 4xx other than 408/429 (or a redirect): sending it again cannot
    /// help.
    Rejected(StatusCode),
    /// The receiver is down or busy: try again, after `after` if it said.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

pub struct Client {
    url: WebhookUrl,
    conn: Connection,
}

impl Client {
    pub fn new(
        url: WebhookUrl,
        timeout: Duration,
        ca: Option<&Path>,
    ) -> Result<Client, crate::trust::TrustError> {
        let tls = if url.https() {
            Some(TlsConnector::from(tls_config(ca)?))
        } else {
            None
        };
        let conn = Connection::new(url.host(), url.port(), tls, timeout);
        Ok(Client { url, conn })
    }

    /// POSTs `body` with `headers`.
    pub async fn post(&mut self, headers: &[(&'static str, String)], body: Bytes) -> Outcome {
        let authority = self
            .url
            .0
            .authority()
            .map_or_else(|| self.url.host().to_string(), |a| a.to_string());
        let mut request = Request::post(self.url.path_and_query())
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("modelgate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(err) => {
                return Outcome::Retry {
                    reason: format!("building the request: {err}"),
                    after: None,
                };
            }
        };
        match self.conn.send(request).await {
            Ok(answer) => classify(answer.status, answer.retry_after),
            Err(reason) => Outcome::Retry {
                reason,
                after: None,
            },
        }
    }
}

pub fn classify(status: StatusCode, after: Option<Duration>) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::Retry {
            reason: format!("the receiver answered {status}"),
            after,
        }
    } else if status.is_client_error() || status.is_redirection() {
        Outcome::Rejected(status)
    } else {
        Outcome::Retry {
            reason: format!("the receiver answered {status}"),
            after,
        }
    }
}

/// The system's trust roots plus the sink's own CA, if any.
fn tls_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, crate::trust::TrustError> {
    crate::trust::client_config(ca, "webhook", &[b"http/1.1"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_answers_are_retried() {
        let retry = |code: u16| {
            matches!(
                classify(StatusCode::from_u16(code).unwrap(), None),
                Outcome::Retry { .. }
            )
        };
        assert_eq!(classify(StatusCode::OK, None), Outcome::Delivered);
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Outcome::Delivered);
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retry(code), "{code} is retried");
        }
        for code in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!retry(code), "{code} is dropped");
        }
    }
}
