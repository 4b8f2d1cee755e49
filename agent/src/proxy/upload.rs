//! Uploads too large to hold: a file, audio, a multipart form to an upload
//! endpoint. The head of the body (its form fields) is read and decided on
//! like any request; the rest streams upstream piece by piece. Under a data
//! rule each piece is scanned before it leaves (`inspect::stream`), and a
//! finding the rule does not let leave aborts the upstream request: the
//! streamed body fails, so the upstream never receives a complete body, and
//! the client gets the provider-shaped refusal.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    Shared,
    conn::Conn,
    forward::BoxError,
    govern::{self, DataRules},
};
use crate::{
    audit::{AuditFinding, AuditRecord, Outcome},
    inspect::{self, Form, encoding, multipart, stream::StreamScan},
    policy::{controls::DataAction, decide::DataFinding},
    providers::RequestInfo,
};

/// Whether a request is an upload: a body the upstream stores or
/// transcribes rather than a JSON document policy must read whole.
pub fn is_upload(method: &Method, path: &str, content_type: Option<&str>) -> bool {
    if !matches!(*method, Method::POST | Method::PUT) {
        return false;
    }
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media == "application/json" || media.ends_with("+json") {
        return false;
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        // OpenAI and Anthropic files, OpenAI's multi-part uploads, Gemini's
        // media upload endpoint.
        [.., "files"] | [.., "uploads", _, "parts"] | ["", "upload", ..] => true,
        [.., "audio", "transcriptions" | "translations"] => true,
        _ => false,
    }
}

/// A request body read up to a limit.
pub enum Read {
    Whole(Bytes),
    /// Past the limit: what was read, and the rest to come.
    Over {
        head: Bytes,
        rest: Incoming,
    },
}

/// Reads `body` whole, or until it passes `cap`. A body whose declared
/// length is over `cap` is not read at all unless `want_head`.
pub async fn read_up_to(mut body: Incoming, cap: usize, want_head: bool) -> Result<Read, BoxError> {
    if !want_head && body.size_hint().lower() > cap as u64 {
        return Ok(Read::Over {
            head: Bytes::new(),
            rest: body,
        });
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing policy reads; they are not forwarded.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() > cap {
            return Ok(Read::Over {
                head: buf.freeze(),
                rest: body,
            });
        }
    }
    Ok(Read::Whole(buf.freeze()))
}

/// The head of a streamed upload as policy reads it: the form fields before
/// the first file part. Content the proxy cannot scan as it streams is
/// `Unreadable`, which a rule with content controls refuses.
pub fn head_body(
    head: &Bytes,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> inspect::Body {
    let mut body = inspect::Body {
        bytes: Bytes::new(),
        codings: Vec::new(),
        form: Form::Empty,
    };
    let codings = content_encoding.map(encoding::codings).unwrap_or_default();
    let sniffed = encoding::sniff(head);
    if !codings.is_empty() || sniffed.is_some() {
        let coding = codings.join(", ");
        let coding = sniffed.filter(|_| coding.is_empty()).unwrap_or(&coding);
        body.form = Form::Unreadable(format!(
            "the upload is {coding}-compressed and too large to decompress whole (over \
             client_limits.stream_uploads_over), and it is not decompressed as it streams; send \
             it uncompressed"
        ));
        return body;
    }
    if let Some(boundary) = content_type.and_then(multipart::boundary) {
        body.form = Form::Multipart(multipart::head_fields(head, &boundary));
    }
    body
}

/// The model and purpose of an upload, which it names in form fields.
pub fn form_fields(info: &mut RequestInfo, body: &inspect::Body, audit: &mut AuditRecord) {
    let Form::Multipart(parts) = &body.form else {
        return;
    };
    if info.model.is_none() {
        info.model = multipart::field(parts, "model").map(str::to_string);
    }
    audit.purpose = multipart::field(parts, "purpose").map(str::to_string);
}

/// Most of a refused body read and thrown away so its client sees the
/// answer; past it the stream is reset (HTTP/2) or the connection closed.
const DRAIN_MAX: u64 = 256 << 20;

/// Reads and discards what a client still sends of a body the proxy has
/// refused. A client that is still sending may not read the answer until
/// its upload is done: curl over HTTP/2 treats a stream closed under its
/// upload as a framing error and never shows the 413. RFC 9113 §8.1 lets
/// a server answer early and read (or reset) the rest; reading it, within
/// bounds, is what lets every client see why it was refused.
pub fn drain(mut body: Incoming, idle: Duration) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut read = 0u64;
        while read < DRAIN_MAX {
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    });
}

/// Why a streamed upload was stopped.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// `data_blocked`, `quarantined`, `unreadable`, `client_timeout`,
    /// `bad_request`.
    pub outcome: Outcome,
    pub message: String,
    /// A policy refusal (else the client's body failed).
    pub policy: bool,
}

/// What a streamed body did, for its audit record.
#[derive(Default)]
pub struct UploadState {
    forwarded: AtomicU64,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// class name -> (count, action).
    found: BTreeMap<String, (usize, Option<&'static str>)>,
    stopped: Option<Stopped>,
}

impl UploadState {
    pub fn stopped(&self) -> Option<Stopped> {
        self.inner
            .lock()
            .expect("upload state poisoned")
            .stopped
            .clone()
    }

    /// Writes what the body forwarded and found into `audit`.
    pub fn settle(&self, audit: &mut AuditRecord) {
        audit.request_bytes = self.forwarded.load(Ordering::Relaxed);
        audit.request_streamed = true;
        let seen = self.inner.lock().expect("upload state poisoned");
        for (class, (count, _)) in &seen.found {
            match audit.findings.iter_mut().find(|f| &f.class == class) {
                Some(f) => {
                    f.count += count;
                    f.places.push("upload".into());
                }
                None => audit.findings.push(AuditFinding {
                    class: class.clone(),
                    count: *count,
                    places: vec!["upload".into()],
                }),
            }
        }
    }

    fn stop(&self, stopped: Stopped) -> BoxError {
        let message = stopped.message.clone();
        self.inner
            .lock()
            .expect("upload state poisoned")
            .stopped
            .get_or_insert(stopped);
        message.into()
    }
}

/// What scanning a streamed body needs.
pub struct Scanning {
    pub rules: DataRules,
    pub shared: Arc<Shared>,
    pub conn: Arc<Conn>,
}

/// The rest of an upload on its way upstream.
pub struct UploadBody {
    head: Option<Bytes>,
    /// Taken to be drained when the upload is stopped by policy.
    rest: Option<Incoming>,
    length: Option<u64>,
    scan: Option<(StreamScan, Scanning)>,
    out: Option<Bytes>,
    state: Arc<UploadState>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl UploadBody {
    /// `head`: what was read before the decision; `scanning`: the rule's
    /// data controls, when it has any (else bytes pass unscanned).
    pub fn new(
        head: Bytes,
        rest: Incoming,
        boundary: Option<&str>,
        scanning: Option<Scanning>,
        state: Arc<UploadState>,
        idle: Duration,
    ) -> UploadBody {
        let length = rest.size_hint().exact().map(|n| n + head.len() as u64);
        UploadBody {
            head: Some(head),
            rest: Some(rest),
            length,
            scan: scanning.map(|s| (StreamScan::new(boundary), s)),
            out: None,
            state,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            done: false,
        }
    }

    /// Feeds `data` (None: the end) to the scanner, and judges what it
    /// found; an error stops the upload.
    fn feed(&mut self, data: Option<Bytes>) -> Result<(), BoxError> {
        let last = data.is_none();
        let Some((scanner, scanning)) = self.scan.as_mut() else {
            self.out = data;
            self.done = last;
            return Ok(());
        };
        if let Some(data) = data {
            scanner.push(&data);
        }
        if !(scanner.ready() || last) {
            return Ok(());
        }
        let classifier = &scanning.rules.state.policy.classifier;
        let scanned = scanner.scan(classifier, last);
        let verdict = judge(&self.state, scanning, &scanned.found, scanned.unreadable);
        if let Some(stopped) = verdict {
            return Err(self.state.stop(stopped));
        }
        if last {
            report(&self.state, scanning);
            self.done = true;
        }
        if !scanned.release.is_empty() {
            self.out = Some(scanned.release.into());
        }
        Ok(())
    }
}

/// Records what a scan found; a finding the rule does not let leave (or a
/// part that cannot be read) stops the upload.
fn judge(
    state: &UploadState,
    scanning: &Scanning,
    found: &[(usize, usize)],
    unreadable: Option<String>,
) -> Option<Stopped> {
    let rules = &scanning.rules;
    let rule = &rules.rule;
    let classes = rules.state.policy.classifier.classes();
    let (mut blocked, mut quarantined, mut redacted) = (Vec::new(), false, false);
    {
        let mut seen = state.inner.lock().expect("upload state poisoned");
        for &(class, count) in found {
            let action = rules.actions.get(class).copied().flatten();
            let name = classes[class].name.clone();
            match action {
                Some(DataAction::Block) => blocked.push(name.clone()),
                Some(DataAction::Quarantine) => {
                    quarantined = true;
                    blocked.push(name.clone());
                }
                Some(DataAction::Redact) => {
                    redacted = true;
                    blocked.push(name.clone());
                }
                Some(DataAction::Alert) | None => {}
            }
            let entry = seen.found.entry(name).or_insert((0, None));
            entry.0 += count;
            entry.1 = action.map(action_name);
        }
    }
    if !blocked.is_empty() {
        report(state, scanning);
        if quarantined {
            govern::quarantine(&scanning.shared, &scanning.conn, rule, rules.quarantine_for);
        }
        let mut message = format!(
            "modelgate: the upload contains {} and policy rule `{rule}` does not let it leave \
             this host; the upload was stopped before that data was sent",
            blocked.join(", ")
        );
        if redacted {
            message.push_str(
                " (a streamed upload cannot be redacted: remove the data, or send a body under \
                 client_limits.stream_uploads_over, where text bodies are redacted)",
            );
        }
        return Some(Stopped {
            outcome: if quarantined {
                Outcome::Quarantined
            } else {
                Outcome::DataBlocked
            },
            message,
            policy: true,
        });
    }
    let why = unreadable?;
    rules.unreadable_blocks.then(|| Stopped {
        outcome: Outcome::Unreadable,
        message: format!(
            "modelgate: policy rule `{rule}` inspects what uploads carry, and this one cannot be \
             read as it streams: {why}; the upload was stopped"
        ),
        policy: true,
    })
}

fn action_name(action: DataAction) -> &'static str {
    match action {
        DataAction::Block => "block",
        DataAction::Redact => "redact",
        DataAction::Alert => "alert",
        DataAction::Quarantine => "quarantine",
    }
}

/// One alert for what the stream found that the rule acts on.
fn report(state: &UploadState, scanning: &Scanning) {
    let findings: Vec<DataFinding> = {
        let seen = state.inner.lock().expect("upload state poisoned");
        seen.found
            .iter()
            .map(|(class, (count, action))| DataFinding {
                class: class.clone(),
                count: *count,
                action: *action,
                places: vec!["upload".into()],
            })
            .collect()
    };
    govern::report_findings(
        &scanning.shared,
        &scanning.conn,
        &scanning.rules.rule,
        &findings,
    );
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(out) = this.out.take() {
                this.state
                    .forwarded
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let Some(rest) = this.rest.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match this.head.take() {
                Some(head) => Some(head),
                None => match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let deadline = tokio::time::Instant::now() + this.idle;
                        this.timer.as_mut().reset(deadline);
                        match frame.into_data() {
                            Ok(data) => Some(data),
                            Err(_) => continue,
                        }
                    }
                    Poll::Ready(Some(Err(err))) => {
                        this.done = true;
                        let stopped = Stopped {
                            outcome: Outcome::BadRequest,
                            message: format!("modelgate: reading the upload failed: {err}"),
                            policy: false,
                        };
                        return Poll::Ready(Some(Err(this.state.stop(stopped))));
                    }
                    Poll::Ready(None) => None,
                    Poll::Pending => {
                        if this.timer.as_mut().poll(cx).is_ready() {
                            this.done = true;
                            let stopped = Stopped {
                                outcome: Outcome::ClientTimeout,
                                message: format!(
                                    "modelgate: the upload stalled: nothing for {}s \
                                     (client_limits.body_timeout)",
                                    this.idle.as_secs()
                                ),
                                policy: false,
                            };
                            return Poll::Ready(Some(Err(this.state.stop(stopped))));
                        }
                        return Poll::Pending;
                    }
                },
            };
            if let Err(err) = this.feed(data) {
                this.done = true;
                this.out = None;
                if let Some(rest) = this.rest.take() {
                    drain(rest, this.idle);
                }
                return Poll::Ready(Some(Err(err)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let forwarded = self.state.forwarded.load(Ordering::Relaxed);
        match self.length {
            Some(n) => SizeHint::with_exact(n.saturating_sub(forwarded)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_told_from_json_requests() {
        let multipart = Some("multipart/form-data; boundary=x");
        for path in [
            "/v1/files",
            "/v1/uploads/upload_abc/parts",
            "/v1/audio/transcriptions",
            "/openai/deployments/d/audio/translations",
            "/upload/v1beta/files",
        ] {
            assert!(is_upload(&Method::POST, path, multipart), "{path}");
        }
        assert!(is_upload(&Method::POST, "/v1/files", None));
        assert!(!is_upload(
            &Method::POST,
            "/v1/files",
            Some("application/json")
        ));
        assert!(!is_upload(&Method::GET, "/v1/files", multipart));
        assert!(!is_upload(&Method::POST, "/v1/chat/completions", multipart));
        assert!(!is_upload(&Method::POST, "/v1/batches", Some("text/plain")));
    }

    #[test]
    fn a_compressed_head_is_unreadable_and_fields_are_read() {
        let gz = Bytes::from_static(&[0x1f, 0x8b, 8, 0, 1, 2]);
        assert!(head_body(&gz, None, None).unreadable().is_some());
        let plain = Bytes::from_static(b"data");
        assert!(head_body(&plain, None, Some("br")).unreadable().is_some());
        let form = Bytes::from_static(
            b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--x\r\n\
              Content-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nRIFF",
        );
        let body = head_body(&form, Some("multipart/form-data; boundary=x"), None);
        let Form::Multipart(parts) = &body.form else {
            panic!("{body:?}")
        };
        assert_eq!(multipart::field(parts, "model"), Some("whisper-1"));
    }
}
