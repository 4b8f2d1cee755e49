//! One HTTP/1.1 connection to a webhook receiver, kept open between
//! deliveries and made again when it breaks. Alerts are few and strictly
//! ordered per sink, so one connection, one request at a time, is all a
//! sink needs — no pool.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::alerts::settings::WebhookUrl;

/// Receivers' answers are read (so the connection can be reused) but
/// not kept; anything longer is cut and the connection dropped.
const MAX_ANSWER: usize = 64 * 1024;

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
    tls: Option<TlsConnector>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(url: WebhookUrl, timeout: Duration, ca: Option<&Path>) -> Result<Client> {
        let tls = if url.https() {
            Some(TlsConnector::from(tls_config(ca)?))
        } else {
            None
        };
        Ok(Client {
            url,
            tls,
            timeout,
            conn: None,
        })
    }

    /// POSTs `body` with `headers`; the whole attempt (connect, TLS,
    /// request, answer) is bounded by the sink's timeout.
    pub async fn post(&mut self, headers: &[(&'static str, String)], body: Bytes) -> Outcome {
        let attempt = tokio::time::timeout(self.timeout, self.try_post(headers, body)).await;
        let result = match attempt {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        };
        match result {
            Ok(outcome) => outcome,
            Err(err) => {
                self.conn = None;
                Outcome::Retry {
                    reason: format!("{err:#}"),
                    after: None,
                }
            }
        }
    }

    async fn try_post(
        &mut self,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Outcome> {
        let reusable = match self.conn.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match reusable {
            Some(sender) => sender,
            None => self.connect().await?,
        };
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
        let request = request
            .body(Full::new(body))
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let status = response.status();
        let after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the answer to the end so the connection can carry the next
        // alert; one that is too long or broken costs only the connection.
        if Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .is_ok()
        {
            self.conn = Some(sender);
        }
        Ok(classify(status, after))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let (host, port) = (self.url.host().trim_matches(['[', ']']), self.url.port());
        crate::trust::connect_http1(host, port, self.tls.as_ref()).await
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
fn tls_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
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
