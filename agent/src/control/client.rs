//! The CLI's side of the control API: one request per command over the
//! unix socket, with errors that say what to do.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// How long one request may take; a reload re-resolves the catalog's hosts.
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    socket: PathBuf,
}

/// Why a request got no (usable) answer from an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "modelgate is not running (no agent listens on {0}): start it with \
         `systemctl start modelgate` or `modelgate run`; if it runs with \
         --state-dir, pass the same --state-dir here"
    )]
    NotRunning(PathBuf),
    #[error(
        "permission denied on {0}: the control socket is for root and the \
         `modelgate` group (sudo usermod -aG modelgate $USER, then log in again)"
    )]
    Denied(PathBuf),
    #[error("connecting to {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error(
        "the agent did not answer on {} within {}s; see its log (journalctl -u modelgate)",
        .0.display(),
        TIMEOUT.as_secs()
    )]
    Timeout(PathBuf),
    #[error("starting the client runtime")]
    Runtime(#[source] std::io::Error),
    #[error("building the request")]
    Request(#[source] http::Error),
    #[error("{0}")]
    Http(&'static str, #[source] hyper::Error),
    #[error("the agent refused ({status}): {text}")]
    Refused { status: StatusCode, text: String },
    #[error("the agent's answer is not what this modelgate expects; is it the same version?")]
    Unexpected(#[source] serde_json::Error),
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(ClientError::Unexpected)
    }

    /// The body when the agent said yes; its explanation as the error
    /// otherwise.
    pub fn ok(self) -> Result<Reply> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(ClientError::Refused {
                status: self.status,
                text: self.text().trim().to_string(),
            })
        }
    }
}

impl Client {
    pub fn new(state_dir: &Path) -> Client {
        Client {
            socket: super::socket_path(state_dir),
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Result<Reply> {
        self.request(Method::POST, path)
    }

    /// `Ok(None)` when no agent is running: for commands that can read
    /// the state directory themselves instead.
    pub fn get_if_running(&self, path: &str) -> Result<Option<Reply>> {
        match self.get(path) {
            Ok(reply) => Ok(Some(reply)),
            Err(ClientError::NotRunning(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn request(&self, method: Method, path: &str) -> Result<Reply> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, self.send(method, path))
                .await
                .map_err(|_| ClientError::Timeout(self.socket.clone()))?
        })
    }

    async fn send(&self, method: Method, path: &str) -> Result<Reply> {
        let stream = match UnixStream::connect(&self.socket).await {
            Ok(stream) => stream,
            Err(err) => {
                return Err(match err.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning(self.socket.clone())
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        ClientError::Denied(self.socket.clone())
                    }
                    _ => ClientError::Connect(self.socket.clone(), err),
                });
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| ClientError::Http("talking to the agent", err))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "modelgate")
            .body(Empty::<Bytes>::new())
            .map_err(ClientError::Request)?;
        let response = sender.send_request(request).await.map_err(|err| {
            ClientError::Http("the agent closed the connection; see its log", err)
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| ClientError::Http("reading the agent's answer", err))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
