//! The upstream's answer on its way to the client, observed as it passes,
//! and the audit record it closes.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::{
    Shared,
    forward::{BoxError, error_chain, ms},
    stream_usage, token_estimate,
    upload::UploadState,
};
use crate::{
    audit::{AuditRecord, Outcome, Tokens},
    policy::StorePrompts,
    providers::{self, Family, ResponseObserver, Usage},
};

pub struct Pending {
    pub shared: Arc<Shared>,
    pub audit: AuditRecord,
    pub prompt: String,
    pub started: Instant,
    /// The deciding rule's storage choice, over the agent's.
    pub store_prompts: Option<StorePrompts>,
    /// (rule, key) whose budget pays for the tokens.
    pub budget: Option<(String, String)>,
    /// A streamed request body: what it forwarded and found is known only
    /// once it has gone.
    pub upload: Option<Arc<UploadState>>,
}

impl Pending {
    /// Closes the record with what the answer used: tokens (counted here
    /// when the provider reported none), their price, the budget charged,
    /// the texts kept as policy says.
    pub fn settle(
        mut self,
        usage: Usage,
        output: String,
        output_bytes: usize,
        first_byte: Option<Instant>,
    ) {
        // The request's own times, before any counting below.
        self.audit.latency_ms = ms(self.started.elapsed());
        self.audit.ttfb_ms = first_byte.map(|at| ms(at.duration_since(self.started)));
        let seen = self.seen(&output, output_bytes);
        if !token_estimate::needed(&seen, &usage) {
            return self.charge(usage, &output);
        }
        // Tokenizing (and, the first time, loading the encoding) takes
        // milliseconds: off the threads that carry requests.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime
                    .spawn_blocking(move || self.estimate_and_charge(usage, output, output_bytes));
            }
            Err(_) => self.estimate_and_charge(usage, output, output_bytes),
        }
    }

    fn seen<'a>(&'a self, output: &'a str, output_bytes: usize) -> token_estimate::Seen<'a> {
        token_estimate::Seen {
            operation: self.audit.operation,
            status: self.audit.status,
            model: self.audit.model.as_deref(),
            messages: self.audit.messages,
            prompt: &self.prompt,
            prompt_bytes: self.audit.prompt_bytes,
            output,
            output_bytes,
        }
    }

    fn estimate_and_charge(mut self, mut usage: Usage, output: String, output_bytes: usize) {
        self.audit.tokens_estimated =
            token_estimate::fill(&self.seen(&output, output_bytes), &mut usage);
        self.charge(usage, &output);
    }

    fn charge(mut self, usage: Usage, output: &str) {
        self.audit.tokens = Tokens {
            input: usage.input_tokens,
            output: usage.output_tokens,
            cache_read: usage.cache_read_input_tokens,
            reasoning: usage.reasoning_output_tokens,
        };
        let shared = &self.shared;
        let tokens = usage.input_tokens.unwrap_or(0) + usage.output_tokens.unwrap_or(0);
        let cost = self.audit.model.as_deref().and_then(|model| {
            let state = shared.policy.read().expect("policy lock poisoned").clone();
            state.prices.cost(
                &self.audit.provider,
                model,
                usage.input_tokens.unwrap_or(0),
                usage.output_tokens.unwrap_or(0),
            )
        });
        self.audit.cost_usd = cost;
        if let Some((rule, key)) = &self.budget {
            shared
                .budgets
                .lock()
                .expect("budget lock poisoned")
                .record_usage(
                    rule,
                    key,
                    tokens,
                    cost.unwrap_or(0.0),
                    std::time::SystemTime::now(),
                );
        }
        let store = self.store_prompts.unwrap_or(shared.store_prompts);
        self.audit.store_text(store, &self.prompt, output);
        shared.record(self.audit);
    }
}

/// The upstream body on its way to the client, chunk by chunk, observed as
/// it passes. Its end — or its drop, when the client goes away — closes the
/// audit record; dropping the upstream body cancels the upstream request.
pub struct ObservedBody {
    family: Family,
    /// Longest wait for the next piece of the body.
    idle: std::time::Duration,
    /// Fires no earlier than `idle` after the last piece; moved on only
    /// when it fires (resetting a timer per chunk would cost a trip into
    /// the timer wheel each time).
    timer: Pin<Box<tokio::time::Sleep>>,
    last_piece: tokio::time::Instant,
    /// The provider-shaped error event a broken stream ends with.
    ending: Option<Bytes>,
    done: bool,
    inner: Incoming,
    observer: ResponseObserver,
    pending: Option<Pending>,
    bytes: u64,
    first_byte: Option<Instant>,
    event_stream: bool,
    /// Set when the proxy asked for usage the client did not ask for.
    hide_usage: Option<stream_usage::Hider>,
}

impl ObservedBody {
    pub fn new(
        family: Family,
        idle: std::time::Duration,
        inner: Incoming,
        event_stream: bool,
        hide_usage: Option<stream_usage::Hider>,
        pending: Pending,
    ) -> ObservedBody {
        ObservedBody {
            family,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            last_piece: tokio::time::Instant::now(),
            ending: None,
            done: false,
            inner,
            observer: ResponseObserver::new(event_stream),
            pending: Some(pending),
            bytes: 0,
            first_byte: None,
            event_stream,
            hide_usage: hide_usage.filter(|_| event_stream),
        }
    }

    /// The upstream body failed: recorded; a stream then ends with an error
    /// event the client's SDK understands, anything else is cut off (its
    /// status is already sent, so breaking the body is the only honest
    /// signal left).
    fn break_off(
        &mut self,
        outcome: Outcome,
        message: String,
        err: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.close(outcome, Some(message.clone()));
        self.done = true;
        if self.event_stream {
            let event = providers::stream_error(self.family, &message);
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        Poll::Ready(Some(Err(err)))
    }

    fn close(&mut self, outcome: Outcome, error: Option<String>) {
        let Some(mut pending) = self.pending.take() else {
            return;
        };
        let (usage, output, output_bytes) = self.observer.finish();
        pending.audit.outcome = outcome;
        pending.audit.error = error;
        pending.audit.response_bytes = self.bytes;
        if let Some(upload) = &pending.upload {
            upload.settle(&mut pending.audit);
        }
        if self.event_stream {
            pending.audit.stream_events = Some(self.observer.events);
            let chunks = self.observer.take_chunks();
            pending.audit.time_to_first_chunk_ms = chunks
                .first
                .map(|at| ms(at.duration_since(pending.started)));
            pending.audit.chunk_gaps_s = chunks.gaps;
        }
        pending.settle(usage, output, output_bytes, self.first_byte);
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(event) = this.ending.take() {
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(err))) => return this.broke(err),
                Poll::Ready(None) => return this.ended(),
                Poll::Pending => return this.wait(cx),
            };
            this.last_piece = tokio::time::Instant::now();
            if let Some(data) = frame.data_ref() {
                this.first_byte.get_or_insert_with(Instant::now);
                this.bytes += data.len() as u64;
                this.observer.feed(data);
            }
            // With a known length the server stops polling once the last
            // byte is out, and drops the body without seeing its end.
            let ended = this.inner.is_end_stream();
            if ended {
                this.close(Outcome::Ok, None);
            }
            let Some(hider) = this.hide_usage.as_mut() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            let mut out = hider.filter(&data);
            if ended {
                out = [out, hider.finish()].concat().into();
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if ended {
                this.done = true;
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ending.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl ObservedBody {
    fn broke(&mut self, err: hyper::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let message = format!(
            "modelgate: the upstream response broke off: {}",
            error_chain(&err)
        );
        self.break_off(Outcome::UpstreamError, message, Box::new(err))
    }

    fn ended(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.close(Outcome::Ok, None);
        let rest = self.hide_usage.as_mut().map(stream_usage::Hider::finish);
        match rest.filter(|rest| !rest.is_empty()) {
            Some(rest) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::data(rest))))
            }
            None => Poll::Ready(None),
        }
    }

    /// Nothing from upstream yet: waits, up to the idle limit.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_piece + self.idle;
            if deadline <= tokio::time::Instant::now() {
                break;
            }
            // A piece came since the timer was set: wait from that one.
            self.timer.as_mut().reset(deadline);
        }
        let message = format!(
            "modelgate: the upstream response stopped: nothing for {}s",
            self.idle.as_secs()
        );
        self.break_off(Outcome::UpstreamTimeout, message.clone(), message.into())
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let message = "the client went away before the response ended; the upstream request was cancelled";
            self.close(Outcome::ClientDisconnected, Some(message.to_string()));
        }
    }
}
