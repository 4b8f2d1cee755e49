//! The agent's own deliveries (alert webhooks, OTLP export): one kept-alive
//! HTTP/1.1 connection per destination, one request at a time, made again
//! when it breaks. Each caller decides from the `Answer` what is delivered,
//! refused or worth retrying; the connection, the timeout and the
//! `Retry-After` header are handled once, here.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use tokio_rustls::TlsConnector;

/// Receivers answer with a short status message; anything longer is cut
/// and costs the connection.
const MAX_ANSWER: usize = 64 * 1024;

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connecting to {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("`{0}` is not a valid TLS name")]
    TlsName(String),
    #[error("TLS with {0}")]
    Tls(String, #[source] std::io::Error),
    #[error("HTTP handshake")]
    Handshake(#[source] hyper::Error),
    #[error("sending the request")]
    Send(#[source] hyper::Error),
}

type Result<T, E = DeliveryError> = std::result::Result<T, E>;

/// What the server said.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// Its `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
    /// Empty when the body was too long or broken.
    pub body: Bytes,
}

pub struct Connection {
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// `host` without brackets; TLS when `tls` is given.
    pub fn new(host: &str, port: u16, tls: Option<TlsConnector>, timeout: Duration) -> Self {
        Connection {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            tls,
            timeout,
            sender: None,
        }
    }

    /// Sends `request`; the whole attempt (connect, TLS, request, answer)
    /// is bounded by the timeout. An error is the reason no answer came,
    /// for the log.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let attempt = tokio::time::timeout(self.timeout, self.try_send(request)).await;
        let result = attempt.unwrap_or(Err(DeliveryError::Timeout(self.timeout)));
        result.map_err(|err| {
            self.sender = None;
            crate::errors::chain(&err)
        })
    }

    async fn try_send(&mut self, request: Request<Full<Bytes>>) -> Result<Answer> {
        let reusable = match self.sender.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match reusable {
            Some(sender) => sender,
            None => connect_http1(&self.host, self.port, self.tls.as_ref()).await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(DeliveryError::Send)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, SystemTime::now()));
        // Read to the end so the connection can carry the next delivery.
        let body = match Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
        {
            Ok(body) => {
                self.sender = Some(sender);
                body.to_bytes()
            }
            Err(_) => Bytes::new(),
        };
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect_http1(
    host: &str,
    port: u16,
    tls: Option<&TlsConnector>,
) -> Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|err| DeliveryError::Connect(format!("{host}:{port}"), err))?;
    // Only a latency hint: a socket that refuses it still delivers.
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| DeliveryError::TlsName(host.to_string()))?;
            Box::new(
                tls.connect(name, tcp)
                    .await
                    .map_err(|err| DeliveryError::Tls(format!("{host}:{port}"), err))?,
            )
        }
        None => Box::new(tcp),
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(DeliveryError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: retry now"
        );
        assert_eq!(retry_after("soon", now), None);
    }
}
