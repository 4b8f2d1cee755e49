//! Realtime sessions (OpenAI Realtime, Azure's, Gemini Live): a WebSocket
//! upgrade is admitted by the same rules as a request — before the 101 —
//! then relayed message by message. Every client text message is judged as
//! a request would be (model, data, prompt size, budget), so a session
//! cannot switch to a denied model or carry what a request could not; one
//! audit record closes the session with its duration, bytes, messages and
//! the usage the provider reported.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, Utf8Bytes,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tracing::debug;

use super::{
    Shared,
    conn::Conn,
    forward::{self, BoxError, ProxyBody, audit_findings, error_chain, refused},
    govern::{self, Verdict},
    head::{self, forwardable, upstream_authority, upstream_target},
    observed::Pending,
};
use crate::{
    audit::{Handling, Outcome, Session},
    inspect,
    providers::{Family, Refusal, RequestInfo, realtime, realtime::SessionObserver},
};

/// Largest message relayed; OpenAI's own limit on a client event is 15 MiB.
const MAX_MESSAGE: usize = 16 << 20;
/// How long the other side may take to answer a close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Whether `parts` asks to switch this HTTP/1.1 connection to WebSocket.
pub fn is_upgrade(parts: &http::request::Parts) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    parts.method == Method::GET
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
}

/// What one session needs from its request's handling.
pub struct Opening {
    pub shared: Arc<Shared>,
    pub conn: Arc<Conn>,
    pub scheme: &'static str,
    pub host: Arc<str>,
    pub family: Family,
    pub path: String,
    pub started: Instant,
}

/// Admits, opens and starts relaying one session; answers the client's
/// upgrade request (101, or why not).
pub async fn open(
    o: Opening,
    mut parts: http::request::Parts,
    audit: crate::audit::AuditRecord,
) -> Response<ProxyBody> {
    let Opening {
        shared,
        conn,
        scheme,
        host,
        family,
        path,
        started,
    } = o;
    let (host, mut audit) = match head::admit(
        &shared, &conn, scheme, &host, &parts, audit, started, family,
    ) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let query = parts.uri.query().map(str::to_string);
    let azure = conn.info.api == Some(crate::catalog::Api::AzureOpenai);
    let info = realtime::session_info(query.as_deref(), azure);
    audit.operation = Some(info.operation);
    audit.model = info.model.clone();
    shared
        .live
        .model(&conn.info.identity, info.model.as_deref());

    let mut headers = forwardable(&parts.headers);
    // Messages are read and judged: no compression is negotiated, so
    // every frame is readable (a server may always decline an extension).
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let nothing = inspect::read_body(&Bytes::new(), None, None, false);
    let verdict = govern::decide(
        &shared,
        &conn,
        family,
        &host,
        &path,
        query.as_deref(),
        &info,
        &nothing,
        &mut headers,
    )
    .await;
    let admitted = match verdict {
        Verdict::Forward(forward) => forward,
        Verdict::Refuse(refuse) => return refused(&shared, audit, started, family, refuse, ""),
    };
    audit.rule = admitted.rule.clone();
    audit.findings = audit_findings(&admitted.findings);

    let authority = upstream_authority(&conn, scheme, &host);
    let target = upstream_target(&path, query.as_deref(), admitted.strip_query_key);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&authority) {
        headers.insert(header::HOST, value);
    }
    let Some(client_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        let message = "modelgate: this connection cannot switch protocols";
        return fail(
            &shared,
            audit,
            started,
            family,
            StatusCode::BAD_REQUEST,
            message,
        );
    };
    let opened = tokio::time::timeout(
        shared.upstream_timeouts.response,
        handshake(&shared, &conn, scheme, &authority, &target, headers),
    )
    .await;
    let response = match opened {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            let message = format!(
                "modelgate could not open the session at {authority} ({}): {}",
                conn.destination,
                error_chain(err.as_ref())
            );
            return fail(
                &shared,
                audit,
                started,
                family,
                StatusCode::BAD_GATEWAY,
                &message,
            );
        }
        Err(_) => {
            let message = format!(
                "modelgate: {authority} ({}) did not answer the session's upgrade within {}s",
                conn.destination,
                shared.upstream_timeouts.response.as_secs()
            );
            return fail(
                &shared,
                audit,
                started,
                family,
                StatusCode::GATEWAY_TIMEOUT,
                &message,
            );
        }
    };
    audit.status = Some(response.status().as_u16());
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return declined(&shared, audit, started, response).await;
    }
    let (mut upstream_parts, upstream_body) = response.into_parts();
    let upstream_upgrade =
        hyper::upgrade::on(Response::from_parts(upstream_parts.clone(), upstream_body));
    let mut answer = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    upstream_parts
        .headers
        .remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let mut answer_headers = forwardable(&upstream_parts.headers);
    answer_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    answer_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    *answer.headers_mut() = answer_headers;

    let opened_at = Instant::now();
    let session = Relay {
        pending: Pending {
            shared: shared.clone(),
            audit,
            prompt: String::new(),
            started,
            store_prompts: admitted.store_prompts,
            budget: admitted.budget,
            upload: None,
        },
        conn,
        family,
        host,
        path,
        info,
        opened_at,
        seen: SessionObserver::default(),
        client_bytes: 0,
        upstream_bytes: 0,
    };
    tokio::spawn(async move {
        let sockets = tokio::try_join!(client_upgrade, upstream_upgrade);
        match sockets {
            Ok((client, upstream)) => session.run(client, upstream).await,
            Err(err) => session.end(
                Outcome::UpstreamError,
                Some(format!("modelgate: the session could not start: {err}")),
                "modelgate",
                None,
            ),
        }
    });
    answer
}

/// The upgrade request on a connection of its own (a session outlives any
/// request; pooled connections are for requests).
async fn handshake(
    shared: &Shared,
    conn: &Conn,
    scheme: &str,
    authority: &str,
    target: &str,
    headers: HeaderMap,
) -> Result<Response<hyper::body::Incoming>, BoxError> {
    let uri: http::Uri = format!("{scheme}://{authority}{target}").parse()?;
    let io = shared
        .upstreams
        .open_http1(conn.destination, uri.clone())
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            debug!(error = %err, "upstream session connection ended with an error");
        }
    });
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .body(Empty::<Bytes>::new())?;
    *request.headers_mut() = headers;
    Ok(sender.send_request(request).await?)
}

/// The upstream would not switch: its answer goes to the client as it is
/// (an SDK shows the provider's own error), recorded as a declined session.
async fn declined(
    shared: &Shared,
    mut audit: crate::audit::AuditRecord,
    started: Instant,
    response: Response<hyper::body::Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let body = match tokio::time::timeout(
        shared.upstream_timeouts.response,
        Limited::new(body, 1 << 20).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    audit.outcome = Outcome::UpgradeDeclined;
    audit.error = Some(format!(
        "the upstream answered {} to the session's upgrade instead of 101",
        parts.status
    ));
    audit.response_bytes = body.len() as u64;
    forward::finish(shared, audit, started, None);
    parts.headers = forwardable(&parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Full::new(body).map_err(|never| match never {}).boxed(),
    )
}

fn fail(
    shared: &Shared,
    audit: crate::audit::AuditRecord,
    started: Instant,
    family: Family,
    status: StatusCode,
    message: &str,
) -> Response<ProxyBody> {
    let outcome = if status == StatusCode::GATEWAY_TIMEOUT {
        Outcome::UpstreamTimeout
    } else if status == StatusCode::BAD_REQUEST {
        Outcome::BadRequest
    } else {
        Outcome::UpstreamError
    };
    let why = forward::Answer {
        refusal: Refusal::Upstream,
        status,
        outcome,
        message,
    };
    forward::answer(shared, audit, started, family, why)
}

/// One open session and what it has seen.
struct Relay {
    pending: Pending,
    conn: Arc<Conn>,
    family: Family,
    host: Arc<str>,
    path: String,
    /// The session's meaning so far; its model follows the client's
    /// switches.
    info: RequestInfo,
    opened_at: Instant,
    seen: SessionObserver,
    client_bytes: u64,
    upstream_bytes: u64,
}

/// What became of a client message.
enum Judged {
    Send(Message),
    /// Policy refuses it: the session ends, the message goes nowhere.
    Refuse(govern::Refuse),
}

impl Relay {
    async fn run(mut self, client: Upgraded, upstream: Upgraded) {
        let shared = self.pending.shared.clone();
        // A session is a request in flight for as long as it lasts.
        let _in_flight = (
            shared.metrics.request_in_flight(),
            shared.live.start(&self.conn.info.identity),
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let mut client =
            WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(config))
                .await;
        let mut upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config))
                .await;
        loop {
            tokio::select! {
                message = client.next() => match message {
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|f| u16::from(f.code));
                        let _ = upstream.send(Message::Close(frame)).await;
                        drain(&mut upstream).await;
                        return self.end(Outcome::Ok, None, "client", code);
                    }
                    Some(Ok(message)) => {
                        self.client_bytes += message.len() as u64;
                        let message = match self.judge(message).await {
                            Judged::Send(message) => message,
                            Judged::Refuse(refuse) => {
                                return self.refuse(refuse, &mut client, &mut upstream).await;
                            }
                        };
                        if let Err(err) = upstream.send(message).await {
                            let _ = client.close(Some(going_away("the model API went away"))).await;
                            let error = format!("modelgate: relaying to the model API failed: {err}");
                            return self.end(Outcome::UpstreamError, Some(error), "upstream", None);
                        }
                    }
                    Some(Err(err)) => {
                        let _ = upstream.close(Some(going_away("the client went away"))).await;
                        let error = format!("the client's side of the session broke: {err}");
                        return self.end(Outcome::ClientDisconnected, Some(error), "client", None);
                    }
                    None => {
                        let _ = upstream.close(Some(going_away("the client went away"))).await;
                        let error = "the client went away without closing the session".to_string();
                        return self.end(Outcome::ClientDisconnected, Some(error), "client", None);
                    }
                },
                message = upstream.next() => match message {
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|f| u16::from(f.code));
                        let _ = client.send(Message::Close(frame)).await;
                        drain(&mut client).await;
                        return self.end(Outcome::Ok, None, "upstream", code);
                    }
                    Some(Ok(message)) => {
                        self.upstream_bytes += message.len() as u64;
                        if let Message::Text(text) = &message {
                            self.seen.upstream_text(text.as_str());
                        } else if matches!(message, Message::Binary(_)) {
                            self.seen.from_upstream += 1;
                        }
                        if !matches!(message, Message::Ping(_) | Message::Pong(_))
                            && client.send(message).await.is_err()
                        {
                            let _ = upstream.close(Some(going_away("the client went away"))).await;
                            let error = "the client went away mid-session".to_string();
                            return self.end(Outcome::ClientDisconnected, Some(error), "client", None);
                        }
                    }
                    Some(Err(err)) => {
                        let _ = client.close(Some(going_away("the model API went away"))).await;
                        let error = format!("modelgate: the model API's side of the session broke: {err}");
                        return self.end(Outcome::UpstreamError, Some(error), "upstream", None);
                    }
                    None => {
                        let _ = client.close(Some(going_away("the model API went away"))).await;
                        let error = "modelgate: the model API went away without closing the session".to_string();
                        return self.end(Outcome::UpstreamError, Some(error), "upstream", None);
                    }
                },
            }
        }
    }

    /// A client message judged as a request to the session's endpoint
    /// would be: its model (a switch included), its data, its size, the
    /// budget. Binary messages are judged as the JSON a server may read
    /// them as (Gemini Live takes either), so data rules refuse one that is
    /// not JSON, as they refuse an unreadable body. Pings and pongs are
    /// answered per hop and go no further.
    async fn judge(&mut self, message: Message) -> Judged {
        let (raw, binary): (Bytes, bool) = match message {
            Message::Text(text) => (text.into(), false),
            Message::Binary(data) => (data, true),
            other => return Judged::Send(other),
        };
        let text = String::from_utf8_lossy(&raw);
        let said = self.seen.client_text(&text);
        if let Some(model) = said.model {
            self.info.model = Some(model);
            self.pending.audit.model = self.info.model.clone();
        }
        let info = RequestInfo {
            prompt_bytes: said.text.len(),
            prompt_text: said.text,
            ..self.info.clone()
        };
        let body = inspect::read_body(&raw, Some("application/json"), None, true);
        let shared = self.pending.shared.clone();
        let verdict = govern::decide(
            &shared,
            &self.conn,
            self.family,
            &self.host,
            &self.path,
            None,
            &info,
            &body,
            &mut HeaderMap::new(),
        )
        .await;
        match verdict {
            Verdict::Refuse(refuse) => Judged::Refuse(refuse),
            Verdict::Forward(forward) => {
                let audit = &mut self.pending.audit;
                for (class, n) in forward.redacted {
                    *audit.redacted.entry(class).or_default() += n;
                }
                merge_findings(&mut audit.findings, audit_findings(&forward.findings));
                let out = forward.body.unwrap_or(raw);
                if binary {
                    return Judged::Send(Message::Binary(out));
                }
                match Utf8Bytes::try_from(out.clone()) {
                    Ok(text) => Judged::Send(Message::Text(text)),
                    Err(_) => Judged::Send(Message::Binary(out)),
                }
            }
        }
    }

    /// Ends the session on a policy refusal: the client hears why (1008),
    /// the model API gets a plain close, the record says what was refused.
    async fn refuse(mut self, refuse: govern::Refuse, client: &mut Socket, upstream: &mut Socket) {
        let _ = upstream
            .close(Some(normal("session ended by policy")))
            .await;
        let reason = refuse.message.clone();
        let _ = client
            .close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: close_reason(&reason).into(),
            }))
            .await;
        drain(client).await;
        let audit = &mut self.pending.audit;
        audit.decision = Handling::Refused;
        audit.rule = refuse.rule;
        merge_findings(&mut audit.findings, audit_findings(&refuse.findings));
        self.end(refuse.outcome, Some(reason), "modelgate", Some(1008));
    }

    fn end(
        mut self,
        outcome: Outcome,
        error: Option<String>,
        closed_by: &'static str,
        close_code: Option<u16>,
    ) {
        let (usage, prompt, output) = self.seen.finish();
        let audit = &mut self.pending.audit;
        if let Some(served) = self.seen.served_model.take() {
            audit.model = Some(served);
        }
        audit.outcome = outcome;
        audit.error = error;
        audit.request_bytes = self.client_bytes;
        audit.response_bytes = self.upstream_bytes;
        audit.session = Some(Session {
            protocol: "websocket",
            client_messages: self.seen.from_client,
            upstream_messages: self.seen.from_upstream,
            closed_by,
            close_code,
        });
        audit.prompt_bytes = prompt.len();
        self.pending.prompt = prompt;
        let opened = Some(self.opened_at);
        let output_bytes = output.len();
        self.pending.settle(usage, output, output_bytes, opened);
    }
}

/// Reads what is left of a closing socket (its close reply), for a while.
async fn drain(socket: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

fn merge_findings(
    into: &mut Vec<crate::audit::AuditFinding>,
    more: Vec<crate::audit::AuditFinding>,
) {
    for finding in more {
        match into.iter_mut().find(|f| f.class == finding.class) {
            Some(known) => {
                known.count += finding.count;
                for place in finding.places {
                    if !known.places.contains(&place) {
                        known.places.push(place);
                    }
                }
            }
            None => into.push(finding),
        }
    }
}

fn going_away(reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::Away,
        reason: reason.into(),
    }
}

fn normal(reason: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    }
}

/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5).
fn close_reason(message: &str) -> String {
    let mut cut = message.len().min(123);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message[..cut].to_string()
}
