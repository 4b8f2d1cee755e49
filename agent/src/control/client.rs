//! The CLI's side of the control API: one request per command over the
//! unix socket, with errors that say what to do.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
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

/// Why a request got no answer from an agent.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
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
}

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
        serde_json::from_slice(&self.body).context(
            "the agent's answer is not what this modelgate expects; is it the same version?",
        )
    }

    /// The body when the agent said yes; its explanation as the error
    /// otherwise.
    pub fn ok(self) -> Result<Reply> {
        if self.status.is_success() {
            Ok(self)
        } else {
            bail!(
                "the agent refused ({}): {}",
                self.status,
                self.text().trim()
            )
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
            Err(err) if matches!(err.downcast_ref(), Some(Unreachable::NotRunning(_))) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn request(&self, method: Method, path: &str) -> Result<Reply> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, self.send(method, path))
                .await
                .map_err(|_| {
                    anyhow!(
                        "the agent did not answer on {} within {}s; see its log \
                         (journalctl -u modelgate)",
                        self.socket.display(),
                        TIMEOUT.as_secs()
                    )
                })?
        })
    }

    async fn send(&self, method: Method, path: &str) -> Result<Reply> {
        let stream = match UnixStream::connect(&self.socket).await {
            Ok(stream) => stream,
            Err(err) => {
                return Err(match err.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        Unreachable::NotRunning(self.socket.clone()).into()
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        Unreachable::Denied(self.socket.clone()).into()
                    }
                    _ => anyhow!(err).context(format!("connecting to {}", self.socket.display())),
                });
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the agent")?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "modelgate")
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("the agent closed the connection; see its log")?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the agent's answer")?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}
