//! Serving one client connection: each request is read, understood,
//! forwarded upstream and streamed back while its audit record is built.

use std::{convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tracing::debug;

use super::{
    Shared,
    conn::Conn,
    govern::{self, Verdict},
    head::{admit, forwardable, header_text, upstream_authority, upstream_target},
    in_flight,
    observed::{ObservedBody, Pending},
    stream_usage, upload, websocket,
};
use crate::{
    audit::{AuditFinding, AuditRecord, Handling, Outcome},
    catalog::Api,
    inspect,
    policy::decide::DataFinding,
    providers::{self, Family, Refusal, RequestInfo},
};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type ProxyBody = BoxBody<Bytes, BoxError>;

pub async fn serve<I>(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    io: I,
    scheme: &'static str,
    host: Option<String>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let host: Arc<str> = host
        .or_else(|| conn.info.fallback_host.clone())
        .unwrap_or_else(|| conn.destination.ip().to_string())
        .into();
    let shared_limits = shared.limits;
    let service = service_fn(move |request| {
        let (shared, conn, host) = (shared.clone(), conn.clone(), host.clone());
        async move {
            let in_flight = (
                shared.metrics.request_in_flight(),
                shared.live.start(&conn.info.identity),
            );
            let response = handle(shared, conn, request, scheme, host).await;
            Ok::<_, Infallible>(in_flight::hold(response, in_flight))
        }
    });
    let limits = shared_limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    // Rapid reset (CVE-2023-44487) and stream floods: bounded streams, and
    // a connection that keeps resetting them is closed with GOAWAY.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(64)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    if let Err(err) = builder.serve_connection_with_upgrades(io, service).await {
        debug!(error = %err, "client connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    request: Request<Incoming>,
    scheme: &'static str,
    host: Arc<str>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let family = conn.info.api.map(Family::of).unwrap_or(Family::OpenAi);
    let (parts, body) = request.into_parts();
    // Rules match, and the upstream gets, the path the upstream routes:
    // `//v1/./files` is `/v1/files` to both.
    let path = inspect::path::normalize(parts.uri.path());
    let query = parts.uri.query();
    let mut audit = new_record(&conn, scheme, &host);
    audit.http_version = Some(format!("{:?}", parts.version));
    audit.method = Some(parts.method.to_string());
    audit.path = Some(path.clone());

    if shared.audit_blocked() {
        let message = "modelgate: the audit trail cannot be written right now, and this host \
                       refuses model requests it cannot audit (audit_failure: block); try again \
                       shortly";
        let why = Answer {
            refusal: Refusal::Upstream,
            status: StatusCode::SERVICE_UNAVAILABLE,
            outcome: Outcome::AuditUnavailable,
            message,
        };
        return answer(&shared, audit, started, family, why);
    }
    if websocket::is_upgrade(&parts) {
        let opening = websocket::Opening {
            shared,
            conn,
            scheme,
            host,
            family,
            path,
            started,
        };
        return websocket::open(opening, parts, audit).await;
    }
    // Smuggling needs two parsers that disagree on where a request ends.
    // hyper frames each request once (Transfer-Encoding over Content-Length,
    // conflicting lengths refused), and what goes upstream is re-framed from
    // the body as read, never relayed bytes: upstream sees exactly the
    // requests the policy saw. A large upload streams on (`upload`), each
    // piece checked before it goes.
    let content_type = header_text(&parts.headers, header::CONTENT_TYPE);
    let is_upload = upload::is_upload(&parts.method, &path, content_type.as_deref());
    let limits = shared.limits;
    let cap = if is_upload {
        limits.upload_buffer()
    } else {
        limits.max_buffered_body
    };
    let read = tokio::time::timeout(
        limits.body_timeout,
        upload::read_up_to(body, cap, is_upload),
    )
    .await;
    let (body, streamed) = match read {
        Ok(Ok(upload::Read::Whole(body))) => (body, None),
        Ok(Ok(upload::Read::Over { head, rest })) if is_upload => (head, Some(rest)),
        Ok(Ok(upload::Read::Over { rest, .. })) => {
            upload::drain(rest, limits.body_timeout);
            let message = format!(
                "modelgate: request bodies over {cap} bytes are refused: the proxy reads a JSON \
                 request whole to apply policy (client_limits.max_buffered_body in agent.yaml)"
            );
            let why = Answer {
                refusal: Refusal::TooLarge,
                status: StatusCode::PAYLOAD_TOO_LARGE,
                outcome: Outcome::TooLarge,
                message: &message,
            };
            return answer(&shared, audit, started, family, why);
        }
        Err(_) => {
            let message = format!(
                "modelgate: the request body did not arrive within {}s",
                limits.body_timeout.as_secs()
            );
            return refuse(
                &shared,
                audit,
                started,
                family,
                StatusCode::REQUEST_TIMEOUT,
                Outcome::ClientTimeout,
                &message,
            );
        }
        Ok(Err(err)) => {
            let message = format!("modelgate: reading the request failed: {err}");
            return refuse(
                &shared,
                audit,
                started,
                family,
                StatusCode::BAD_REQUEST,
                Outcome::BadRequest,
                &message,
            );
        }
    };
    let (host, mut audit) = match admit(
        &shared, &conn, scheme, &host, &parts, audit, started, family,
    ) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let content_encoding = header_text(&parts.headers, header::CONTENT_ENCODING);
    let read = match streamed {
        None => inspect::read_body(
            &body,
            content_type.as_deref(),
            content_encoding.as_deref(),
            providers::reads_json(&path),
        ),
        Some(_) => upload::head_body(&body, content_type.as_deref(), content_encoding.as_deref()),
    };
    let mut info = providers::parse_request_json(&path, read.json());
    upload::form_fields(&mut info, &read, &mut audit);
    audit.request_bytes = body.len() as u64;
    apply_request_info(&mut audit, &info);
    shared
        .live
        .model(&conn.info.identity, info.model.as_deref());
    if let Some(why) = read.unreadable() {
        debug!(conn = conn.id, %why, "request body unreadable");
    }

    let mut headers = forwardable(&parts.headers);
    let verdict = govern::decide(
        &shared,
        &conn,
        family,
        &host,
        &path,
        query,
        &info,
        &read,
        &mut headers,
    )
    .await;
    let forward = match verdict {
        Verdict::Forward(forward) => forward,
        Verdict::Refuse(refuse) => {
            return refused(&shared, audit, started, family, refuse, &info.prompt_text);
        }
    };
    audit.rule = forward.rule.clone();
    audit.redacted = forward.redacted.iter().cloned().collect();
    audit.findings = audit_findings(&forward.findings);
    let replaced = forward.body.is_some();
    let body = match forward.body {
        // The rewritten body is the decoded one: it leaves uncompressed.
        Some(replaced) => {
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::CONTENT_ENCODING);
            replaced
        }
        None => body,
    };
    let asks_usage = conn.info.api == Some(Api::Openai) && path.ends_with("/chat/completions");
    let mut hide_usage = None;
    let body = match read.json().filter(|_| asks_usage) {
        Some(json) => {
            // The JSON text: the redacted body, or the body as read
            // (codings undone, no byte-order mark).
            let text = if replaced { &body[..] } else { &read.bytes[..] };
            match stream_usage::ask(json, text) {
                Some(asked) => {
                    headers.remove(header::CONTENT_LENGTH);
                    headers.remove(header::CONTENT_ENCODING);
                    hide_usage = Some(stream_usage::Hider::default());
                    asked
                }
                None => body,
            }
        }
        None => body,
    };
    let path_and_query = upstream_target(&path, query, forward.strip_query_key);
    let authority = upstream_authority(&conn, scheme, &host);
    let uri: Uri = match format!("{scheme}://{authority}{path_and_query}").parse() {
        Ok(uri) => uri,
        Err(err) => {
            let message = format!("modelgate: cannot build the upstream URI: {err}");
            let why = Answer {
                refusal: Refusal::Upstream,
                status: StatusCode::BAD_REQUEST,
                outcome: Outcome::BadRequest,
                message: &message,
            };
            return answer(&shared, audit, started, family, why);
        }
    };
    let (body, upload) = match streamed {
        None => (
            Full::new(body).map_err(|never| match never {}).boxed(),
            None,
        ),
        Some(rest) => {
            let state = Arc::new(upload::UploadState::default());
            let scanning = forward.data.map(|rules| upload::Scanning {
                rules,
                shared: shared.clone(),
                conn: conn.clone(),
            });
            let boundary = content_type
                .as_deref()
                .and_then(inspect::multipart::boundary);
            let body = upload::UploadBody::new(
                body,
                rest,
                boundary.as_deref(),
                scanning,
                state.clone(),
                limits.body_timeout,
            );
            (body.boxed(), Some(state))
        }
    };
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(body)
        .expect("method and URI are valid");
    *upstream.headers_mut() = headers;
    if let Ok(value) = HeaderValue::from_str(&authority) {
        upstream.headers_mut().insert(header::HOST, value);
    }

    let waited = tokio::time::timeout(
        shared.upstream_timeouts.response,
        shared.upstreams.to(conn.destination).request(upstream),
    )
    .await;
    let response = match waited {
        Ok(Ok(response)) => response,
        Err(_) => {
            let message = format!(
                "modelgate: {authority} ({}) did not answer within {}s",
                conn.destination,
                shared.upstream_timeouts.response.as_secs()
            );
            let why = Answer {
                refusal: Refusal::Upstream,
                status: StatusCode::GATEWAY_TIMEOUT,
                outcome: Outcome::UpstreamTimeout,
                message: &message,
            };
            return answer(&shared, audit, started, family, why);
        }
        Ok(Err(_)) if let Some(stopped) = upload.as_ref().and_then(|u| u.stopped()) => {
            return upload_stopped(&shared, audit, started, family, &upload, stopped);
        }
        Ok(Err(err)) => {
            let message = format!(
                "modelgate could not reach {authority} ({}): {}",
                conn.destination,
                error_chain(&err)
            );
            let why = Answer {
                refusal: Refusal::Upstream,
                status: StatusCode::BAD_GATEWAY,
                outcome: Outcome::UpstreamError,
                message: &message,
            };
            return answer(&shared, audit, started, family, why);
        }
    };
    let (mut parts, body) = response.into_parts();
    audit.status = Some(parts.status.as_u16());
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    parts.headers = forwardable(&parts.headers);
    let pending = Pending {
        shared: shared.clone(),
        audit,
        prompt: info.prompt_text,
        started,
        store_prompts: forward.store_prompts,
        budget: forward.budget,
        upload,
    };
    let idle = shared.upstream_timeouts.idle;
    let observed = ObservedBody::new(family, idle, body, event_stream, hide_usage, pending);
    Response::from_parts(parts, observed.boxed())
}

/// A streamed upload stopped before its end: by policy (the upstream got
/// an incomplete body and no more), or by its client.
fn upload_stopped(
    shared: &Shared,
    mut audit: AuditRecord,
    started: Instant,
    family: Family,
    upload: &Option<Arc<upload::UploadState>>,
    stopped: upload::Stopped,
) -> Response<ProxyBody> {
    if let Some(upload) = upload {
        upload.settle(&mut audit);
    }
    if !stopped.policy {
        let status = if stopped.outcome == Outcome::ClientTimeout {
            StatusCode::REQUEST_TIMEOUT
        } else {
            StatusCode::BAD_REQUEST
        };
        return refuse(
            shared,
            audit,
            started,
            family,
            status,
            stopped.outcome,
            &stopped.message,
        );
    }
    audit.decision = Handling::Refused;
    let why = Answer {
        refusal: Refusal::Policy,
        status: StatusCode::FORBIDDEN,
        outcome: stopped.outcome,
        message: &stopped.message,
    };
    answer(shared, audit, started, family, why)
}

pub(super) fn audit_findings(findings: &[DataFinding]) -> Vec<AuditFinding> {
    findings
        .iter()
        .map(|f| AuditFinding {
            class: f.class.clone(),
            count: f.count,
            places: f.places.clone(),
        })
        .collect()
}

fn apply_request_info(audit: &mut AuditRecord, info: &RequestInfo) {
    audit.operation = Some(info.operation);
    audit.model = info.model.clone();
    audit.stream = info.stream;
    audit.messages = info.messages;
    audit.prompt_bytes = info.prompt_bytes;
}

fn new_record(conn: &Conn, scheme: &'static str, host: &str) -> AuditRecord {
    let mut record = conn.audit_record(Handling::Redirect, scheme);
    record.host = Some(host.to_string());
    record
}

pub(super) fn finish(
    shared: &Shared,
    mut audit: AuditRecord,
    started: Instant,
    first_byte: Option<Instant>,
) {
    audit.latency_ms = ms(started.elapsed());
    audit.ttfb_ms = first_byte.map(|at| ms(at.duration_since(started)));
    shared.record(audit);
}

pub(super) fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(super) use crate::errors::chain as error_chain;

/// Why the proxy answers a request itself.
pub(super) struct Answer<'a> {
    pub refusal: Refusal,
    pub status: StatusCode,
    /// The record's `outcome`.
    pub outcome: Outcome,
    pub message: &'a str,
}

/// The proxy answers instead of the model: the record says why (outcome,
/// status, message) and is closed; the client gets the provider's error
/// shape.
pub(super) fn answer(
    shared: &Shared,
    mut audit: AuditRecord,
    started: Instant,
    family: Family,
    answer: Answer,
) -> Response<ProxyBody> {
    audit.outcome = answer.outcome;
    audit.status = Some(answer.status.as_u16());
    audit.error = Some(answer.message.to_string());
    finish(shared, audit, started, None);
    error_response(family, answer.refusal, answer.status, answer.message)
}

/// Answers a request the client got wrong, records why, and closes the
/// connection: after a malformed or half-read request, the next bytes on it
/// cannot be trusted to start a request.
fn refuse(
    shared: &Shared,
    audit: AuditRecord,
    started: Instant,
    family: Family,
    status: StatusCode,
    outcome: Outcome,
    message: &str,
) -> Response<ProxyBody> {
    let why = Answer {
        refusal: Refusal::BadRequest,
        status,
        outcome,
        message,
    };
    let mut response = answer(shared, audit, started, family, why);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A policy refusal: recorded with its rule and findings, answered in the
/// provider's error shape.
pub(super) fn refused(
    shared: &Shared,
    mut audit: AuditRecord,
    started: Instant,
    family: Family,
    refuse: govern::Refuse,
    prompt: &str,
) -> Response<ProxyBody> {
    audit.decision = Handling::Refused;
    audit.findings = audit_findings(&refuse.findings);
    audit.rule = refuse.rule;
    audit.outcome = refuse.outcome;
    audit.status = Some(refuse.status.as_u16());
    audit.error = Some(refuse.message.clone());
    audit.store_text(shared.store_prompts, prompt, "");
    finish(shared, audit, started, None);
    let mut response = error_response(family, refuse.refusal, refuse.status, &refuse.message);
    if let Some(seconds) = refuse.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

pub(super) fn error_response(
    family: Family,
    refusal: Refusal,
    status: StatusCode,
    message: &str,
) -> Response<ProxyBody> {
    let body = providers::error_body(family, refusal, status.as_u16(), message);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-modelgate-error", "1")
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .expect("static response parts are valid")
}
