//! Usage and output extraction from responses of every provider shape,
//! streamed (SSE) or whole: the bytes come from the upstream server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::providers::{ResponseObserver, TEXT_CAP, Usage};
use modelgate_fuzz::chunked;

fn observe(payload: &[u8], chunk: usize, event_stream: bool) -> (Usage, String, usize, u64) {
    let mut observer = ResponseObserver::new(event_stream);
    for piece in payload.chunks(chunk) {
        observer.feed(piece);
    }
    let (usage, text, bytes) = observer.finish();
    (usage, text, bytes, observer.events)
}

fuzz_target!(|data: &[u8]| {
    let Some((chunk, payload)) = chunked(data) else {
        return;
    };
    // Odd chunk sizes try the body as an event stream, even ones as JSON,
    // so each seed runs through both.
    let event_stream = chunk % 2 == 1;
    let whole = observe(payload, payload.len().max(1), event_stream);
    let cut = observe(payload, chunk, event_stream);
    assert_eq!(
        whole, cut,
        "extraction depends on chunking (chunk size {chunk})"
    );
    assert!(
        whole.1.len() <= TEXT_CAP,
        "output text of {} bytes passed the cap of {TEXT_CAP}",
        whole.1.len()
    );
});
