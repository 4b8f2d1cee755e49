//! The agent's side of the control API. Reads of files and the usage store
//! run on blocking threads; status and reload go to the daemon's loop,
//! which owns that state.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request as HttpRequest, Response, StatusCode, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, info, warn};

use super::{GROUP, Request};
use crate::{alerts, live::Live, usage};

/// What the API serves besides the daemon's own state.
#[derive(Clone)]
pub struct Context {
    pub state_dir: PathBuf,
    pub alerts_file: PathBuf,
    pub live: Arc<Live>,
    pub daemon: mpsc::Sender<Request>,
}

/// Removes the socket when the agent stops, so a CLI does not find a
/// dead one and wait on it.
pub struct Bound {
    path: PathBuf,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The control socket could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another modelgate is running with this state directory (its control socket {} \
         answers); stop it, or give this one another --state-dir",
        .0.display()
    )]
    Running(PathBuf),
    #[error("{doing} {}", .path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BindError {
    let path = path.to_path_buf();
    move |source| BindError::Io {
        doing,
        path,
        source,
    }
}

/// Binds `path` (0660, group `modelgate` when that group exists) and
/// serves until the returned guard is dropped with the runtime.
pub async fn serve(path: &Path, context: Context) -> Result<Bound, BindError> {
    let listener = bind(path).await?;
    let context = Arc::new(context);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, context.clone()));
                }
                Err(err) => {
                    warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(Bound {
        path: path.to_path_buf(),
    })
}

async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(io_error("creating the control socket's directory", dir))?;
    }
    if path.exists() {
        // A socket that answers belongs to a running agent; one that does
        // not was left by an agent that died.
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::Running(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_error("removing the stale control socket", path))?;
    }
    let listener =
        UnixListener::bind(path).map_err(io_error("binding the control socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_error("setting the mode of", path))?;
    match uzers::get_group_by_name(GROUP) {
        Some(group) => {
            std::os::unix::fs::chown(path, None, Some(group.gid())).map_err(io_error(
                "giving the `modelgate` group the control socket",
                path,
            ))?;
        }
        None => debug!("no `{GROUP}` group: the control socket is for root only"),
    }
    Ok(listener)
}

async fn connection(stream: UnixStream, context: Arc<Context>) {
    // The socket's mode already keeps others out; the peer's credentials
    // are checked too, so a socket made world-writable by mistake (or an
    // fd passed to another process) still answers only root and the group.
    let cred = stream.peer_cred().ok();
    let peer = cred
        .map(|c| format!("uid {}", c.uid()))
        .unwrap_or_else(|| "an unknown peer".into());
    let allowed = cred.is_some_and(|c| may_use(c.uid(), c.gid(), c.pid()));
    if !allowed {
        warn!(peer = %peer, "refused a control socket client: not root nor in the `{GROUP}` group");
    }
    let service = service_fn(move |request: HttpRequest<hyper::body::Incoming>| {
        let context = context.clone();
        let peer = peer.clone();
        async move {
            let reply = if allowed {
                route(&context, &peer, request).await
            } else {
                error(
                    StatusCode::FORBIDDEN,
                    format!("the control API is for root and the `{GROUP}` group"),
                )
            };
            Ok::<_, std::convert::Infallible>(reply)
        }
    });
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %err, "control connection ended with an error");
    }
}

/// Root, or a process whose group or supplementary groups include
/// `modelgate` (read from /proc: the peer's groups now, not its user's
/// entry in /etc/group, which may have changed since it logged in).
fn may_use(uid: u32, gid: u32, pid: Option<i32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = uzers::get_group_by_name(GROUP).map(|g| g.gid()) else {
        return false;
    };
    gid == group || pid.is_some_and(|pid| supplementary_groups(pid).contains(&group))
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|groups| {
                    groups
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static parts")
}

fn json<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {err}"),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

async fn route<B>(context: &Context, peer: &str, request: HttpRequest<B>) -> Reply {
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/v1/status") => ask(context, Request::Status).await,
        (&Method::POST, "/v1/reload") => {
            let by = peer.to_string();
            info!(by = %by, "policy reload requested over the control socket");
            ask(context, |reply| Request::Reload { by, reply }).await
        }
        (&Method::GET, "/v1/top") => json(&context.live.snapshot()),
        (&Method::GET, "/v1/usage") => usage_reply(context, &query).await,
        (&Method::GET, "/v1/alerts") => alerts_reply(context, &query).await,
        (_, path) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no {} {path}; the API has GET /v1/status, /v1/top, /v1/usage, /v1/alerts \
                 and POST /v1/reload",
                request.method()
            ),
        ),
    }
}

/// Sends `make(reply)` to the daemon's loop and answers with what it says.
async fn ask<T, E, F>(context: &Context, make: F) -> Reply
where
    T: serde::Serialize,
    E: Into<Answer<T>>,
    F: FnOnce(oneshot::Sender<E>) -> Request,
{
    let (tx, rx) = oneshot::channel();
    if context.daemon.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping".into(),
        );
    }
    match rx.await.map(Into::into) {
        Ok(Answer::Value(value)) => json(&value),
        Ok(Answer::Refused(message)) => error(StatusCode::UNPROCESSABLE_ENTITY, message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping".into(),
        ),
    }
}

/// A daemon answer: a value, or a refusal with its reasons.
enum Answer<T> {
    Value(T),
    Refused(String),
}

impl From<super::status::Status> for Answer<super::status::Status> {
    fn from(value: super::status::Status) -> Self {
        Answer::Value(value)
    }
}

impl<T> From<Result<T, String>> for Answer<T> {
    fn from(result: Result<T, String>) -> Self {
        match result {
            Ok(value) => Answer::Value(value),
            Err(message) => Answer::Refused(message),
        }
    }
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn since_ms(query: &[(String, String)]) -> Result<Option<i64>, String> {
    param(query, "since_ms")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| format!("since_ms must be milliseconds since the epoch, not {v:?}"))
        })
        .transpose()
}

async fn usage_reply(context: &Context, query: &[(String, String)]) -> Reply {
    let since = match since_ms(query) {
        Ok(since) => since.unwrap_or(0),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let by = match param(query, "by").map(|b| <usage::By as clap::ValueEnum>::from_str(b, true)) {
        None => usage::By::Exe,
        Some(Ok(by)) => by,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "by must be one of process, exe, unit, container, user, model, provider".into(),
            );
        }
    };
    let path = usage::path(&context.state_dir);
    let result = tokio::task::spawn_blocking(move || usage::query_file(&path, since, by)).await;
    match result {
        Ok(Ok(rows)) => json(&rows),
        Ok(Err(err)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::errors::chain(&err),
        ),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// The matching alerts as stored, one JSON object per line; lines that
/// are not alerts are counted in `x-unreadable`.
async fn alerts_reply(context: &Context, query: &[(String, String)]) -> Reply {
    let since = match since_ms(query) {
        Ok(since) => since,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let cutoff = since.map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    let types: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "type")
        .map(|(_, v)| v.clone())
        .collect();
    let path = context.alerts_file.clone();
    let result =
        tokio::task::spawn_blocking(move || alerts::query::recent(&path, cutoff, &types)).await;
    match result {
        Ok((lines, unreadable)) => {
            let mut body = String::new();
            for (line, _) in lines {
                body.push_str(&line);
                body.push('\n');
            }
            let mut response = reply(StatusCode::OK, "application/x-ndjson", body);
            response
                .headers_mut()
                .insert("x-unreadable", unreadable.into());
            response
        }
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_agents_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        // Closed without unlinking: what a killed agent leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&path).await.expect("the stale socket is replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        let err = bind(&path).await.unwrap_err().to_string();
        assert!(err.contains("another modelgate is running"), "{err}");
        drop(live);
    }

    #[tokio::test]
    async fn unknown_paths_and_bad_parameters_say_what_exists() {
        let (daemon, _rx) = mpsc::channel(1);
        let context = Context {
            state_dir: PathBuf::from("/nonexistent"),
            alerts_file: PathBuf::from("/nonexistent/alerts.jsonl"),
            live: Arc::new(Live::default()),
            daemon,
        };
        let get = |uri: &str| HttpRequest::get(uri).body(()).unwrap();
        let missing = route(&context, "uid 0", get("/v2/status")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let bad = route(&context, "uid 0", get("/v1/usage?by=planet")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let bad = route(&context, "uid 0", get("/v1/alerts?since_ms=yesterday")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let top = route(&context, "uid 0", get("/v1/top")).await;
        assert_eq!(top.status(), StatusCode::OK);
    }
}
