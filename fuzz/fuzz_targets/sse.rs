//! The server-sent-events parser on an upstream's response body: events
//! must not depend on how the bytes were cut into chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::providers::sse::{SseEvent, SseParser};
use modelgate_fuzz::chunked;

fn events(payload: &[u8], chunk: usize) -> Vec<SseEvent> {
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    for piece in payload.chunks(chunk) {
        parser.feed(piece, |e| out.push(e));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((chunk, payload)) = chunked(data) else {
        return;
    };
    let whole = events(payload, payload.len().max(1));
    let cut = events(payload, chunk);
    assert_eq!(whole, cut, "events depend on chunking (chunk size {chunk})");
    for e in &whole {
        assert!(
            !e.event.is_empty() || !e.data.is_empty(),
            "empty event dispatched"
        );
    }
});
