//! Request extraction (operation, model, stream, prompt) for every
//! provider's API shape: the body is what a local application sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::providers::{TEXT_CAP, parse_request};

/// One path per API shape `parse_request` tells apart, so every body is
/// tried against each provider's extraction.
const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.0-flash:generateContent",
    "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
    "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-1.5-pro:generateContent",
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse-stream",
    "/model/amazon.titan-text-express-v1/invoke",
    "/model/amazon.titan-text-express-v1/invoke-with-response-stream",
    "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
    "/api/chat",
    "/api/generate",
];

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks a known path, or (past the table) the path is the input
    // up to the first newline and the body the rest.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (path, body) = match PATHS.get(usize::from(pick)) {
        Some(path) => ((*path).to_owned(), rest),
        None => {
            let cut = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let path = String::from_utf8_lossy(&rest[..cut]).into_owned();
            (path, rest.get(cut + 1..).unwrap_or_default())
        }
    };
    let info = parse_request(&path, body);
    assert!(
        info.prompt_text.len() <= TEXT_CAP,
        "prompt text of {} bytes passed the cap of {TEXT_CAP}",
        info.prompt_text.len()
    );
});
