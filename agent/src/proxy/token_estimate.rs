//! Token counts for answers whose provider did not report them: a server
//! that ignores `stream_options.include_usage`, a stream the client left
//! before its usage chunk, a self-hosted server that sends no `usage` at
//! all. Left uncounted, such calls would slip past `tokens_per_day`
//! budgets, so the proxy counts the text itself with OpenAI's tokenizers
//! (tiktoken) and the record says the figure is an estimate and by which
//! encoding.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tiktoken_rs::{CoreBPE, tokenizer::Tokenizer};

use crate::{audit::TokensEstimated as Estimated, providers::Usage};

/// Operations whose input is text a tokenizer can count. Realtime sessions
/// (audio) and unknown paths are left alone.
const TEXT_OPERATIONS: &[&str] = &[
    "chat",
    "completion",
    "responses",
    "messages",
    "generate_content",
    "converse",
    "invoke",
    "embeddings",
];

/// OpenAI's per-message framing: each message costs a few tokens of role
/// and separators beyond its text, and the reply is primed with three
/// (the count the OpenAI cookbook gives for its chat models).
const TOKENS_PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

/// An encoding costs ~300 ms and ~45 MB to load: loaded when an answer
/// first needs it, released once no answer has needed it for this long, so
/// an agent whose providers report usage never holds one, and one that met
/// a usage-less server once does not keep it for good.
const KEEP_UNUSED: Duration = Duration::from_secs(600);

struct Loaded {
    encoding: Encoding,
    bpe: Arc<CoreBPE>,
    last_used: Instant,
}

static LOADED: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());

/// The encoding, loaded if it is not (the caller is off the request path).
fn loaded(encoding: Encoding) -> Arc<CoreBPE> {
    let now = Instant::now();
    let mut cache = LOADED.lock().expect("tokenizer cache lock poisoned");
    cache.retain(|l| l.encoding == encoding || now.duration_since(l.last_used) < KEEP_UNUSED);
    if let Some(entry) = cache.iter_mut().find(|l| l.encoding == encoding) {
        entry.last_used = now;
        return entry.bpe.clone();
    }
    let bpe = Arc::new(encoding.load());
    cache.push(Loaded {
        encoding,
        bpe: bpe.clone(),
        last_used: now,
    });
    bpe
}

/// Drops encodings no answer has needed for [`KEEP_UNUSED`] (the agent's
/// periodic tick calls this; the memory then goes back to the system with
/// the tick's heap trim).
pub fn release_unused() {
    release_unused_at(Instant::now());
}

fn release_unused_at(now: Instant) {
    if let Ok(mut cache) = LOADED.lock() {
        cache.retain(|l| now.duration_since(l.last_used) < KEEP_UNUSED);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    /// The model's own encoding where tiktoken knows the model; otherwise
    /// o200k_base, the encoding of every current OpenAI family (and as
    /// good a guess as any for models whose tokenizer is not public).
    pub fn for_model(model: Option<&str>) -> Encoding {
        match model.and_then(tiktoken_rs::tokenizer::get_tokenizer) {
            Some(
                Tokenizer::Cl100kBase
                | Tokenizer::P50kBase
                | Tokenizer::P50kEdit
                | Tokenizer::R50kBase
                | Tokenizer::Gpt2,
            ) => Encoding::Cl100k,
            _ => Encoding::O200k,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
        }
    }

    fn load(self) -> CoreBPE {
        let loaded = match self {
            Encoding::O200k => tiktoken_rs::o200k_base(),
            Encoding::Cl100k => tiktoken_rs::cl100k_base(),
        };
        // The vocabularies are compiled in: loading them cannot fail.
        loaded.expect("tiktoken's built-in vocabulary loads")
    }

    /// Tokens in `total_bytes` of text of which `sample` is the start (the
    /// proxy keeps at most 64 KiB of each text): counted on the sample,
    /// scaled to the whole.
    pub fn count(self, sample: &str, total_bytes: usize) -> u64 {
        if sample.is_empty() {
            // Text seen but not kept cannot happen below the cap; a rough
            // four bytes per token all the same rather than zero.
            return (total_bytes as u64).div_ceil(4);
        }
        let tokens = loaded(self).encode_ordinary(sample).len() as u64;
        if total_bytes <= sample.len() {
            return tokens;
        }
        let scaled = tokens as u128 * total_bytes as u128 / sample.len() as u128;
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

/// What the proxy saw of one answered request.
pub struct Seen<'a> {
    pub operation: Option<&'static str>,
    pub status: Option<u16>,
    pub model: Option<&'a str>,
    pub messages: Option<usize>,
    pub prompt: &'a str,
    pub prompt_bytes: usize,
    pub output: &'a str,
    pub output_bytes: usize,
}

/// Whether `usage` lacks a figure the estimate would fill — cheap, so the
/// caller can decide to move the counting off the request's thread.
pub fn needed(seen: &Seen, usage: &Usage) -> bool {
    let success = seen.status.is_some_and(|s| (200..300).contains(&s));
    let Some(operation) = seen.operation.filter(|op| TEXT_OPERATIONS.contains(op)) else {
        return false;
    };
    success
        && (usage.input_tokens.is_none()
            || (usage.output_tokens.is_none() && operation != "embeddings"))
}

/// Fills the figures the provider did not report. Reported figures are
/// never replaced.
pub fn fill(seen: &Seen, usage: &mut Usage) -> Option<Estimated> {
    if !needed(seen, usage) {
        return None;
    }
    let encoding = Encoding::for_model(seen.model);
    let mut estimated = Estimated {
        by: encoding.name(),
        input: false,
        output: false,
    };
    if usage.input_tokens.is_none() {
        let framing = match seen.messages {
            Some(n) if n > 0 => n as u64 * TOKENS_PER_MESSAGE + REPLY_PRIMING,
            _ => 0,
        };
        usage.input_tokens = Some(encoding.count(seen.prompt, seen.prompt_bytes) + framing);
        estimated.input = true;
    }
    if usage.output_tokens.is_none() && seen.operation != Some("embeddings") {
        usage.output_tokens = Some(encoding.count(seen.output, seen.output_bytes));
        estimated.output = true;
    }
    Some(estimated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(prompt: &'a str, output: &'a str) -> Seen<'a> {
        Seen {
            operation: Some("chat"),
            status: Some(200),
            model: Some("gpt-4o-mini"),
            messages: Some(1),
            prompt,
            prompt_bytes: prompt.len(),
            output,
            output_bytes: output.len(),
        }
    }

    #[test]
    fn counts_with_the_models_own_encoding() {
        assert_eq!(Encoding::for_model(Some("gpt-4o-mini")), Encoding::O200k);
        assert_eq!(Encoding::for_model(Some("gpt-4-0613")), Encoding::Cl100k);
        assert_eq!(Encoding::for_model(Some("gpt-3.5-turbo")), Encoding::Cl100k);
        assert_eq!(Encoding::for_model(Some("llama3:8b")), Encoding::O200k);
        assert_eq!(Encoding::for_model(None), Encoding::O200k);
        // tiktoken's own figures for these strings.
        assert_eq!(Encoding::O200k.count("hello world", 11), 2);
        assert_eq!(Encoding::Cl100k.count("hello world", 11), 2);
        assert_eq!(Encoding::O200k.count("", 0), 0);
    }

    #[test]
    fn an_encoding_unused_for_a_while_is_released() {
        let cached = |held: &Arc<CoreBPE>| {
            let cache = LOADED.lock().unwrap();
            cache.iter().any(|l| Arc::ptr_eq(&l.bpe, held))
        };
        let held = loaded(Encoding::Cl100k);
        assert!(cached(&held), "kept for the next answer");
        release_unused_at(Instant::now() + KEEP_UNUSED / 2);
        assert!(cached(&held), "still in use");
        release_unused_at(Instant::now() + KEEP_UNUSED + Duration::from_secs(1));
        assert!(!cached(&held), "released once unused");
    }

    #[test]
    fn a_capped_sample_is_scaled_to_the_whole() {
        let sample = "the quick brown fox ".repeat(100);
        let whole = Encoding::O200k.count(&sample, sample.len());
        assert_eq!(Encoding::O200k.count(&sample, sample.len() * 3), whole * 3);
    }

    #[test]
    fn fills_only_what_the_provider_left_out() {
        let mut usage = Usage::default();
        let estimated = fill(&seen("hello world", "hi there"), &mut usage).unwrap();
        assert_eq!(
            estimated,
            Estimated {
                by: "o200k_base",
                input: true,
                output: true
            }
        );
        // 2 tokens of text, 3 for the message, 3 priming the reply.
        assert_eq!(usage.input_tokens, Some(8));
        assert_eq!(usage.output_tokens, Some(2));

        let mut usage = Usage {
            input_tokens: Some(40),
            ..Usage::default()
        };
        let estimated = fill(&seen("hello world", "hi there"), &mut usage).unwrap();
        assert!(!estimated.input && estimated.output);
        assert_eq!(usage.input_tokens, Some(40));

        let mut reported = Usage {
            input_tokens: Some(40),
            output_tokens: Some(7),
            ..Usage::default()
        };
        assert_eq!(fill(&seen("a", "b"), &mut reported), None);
    }

    #[test]
    fn refusals_sessions_unknown_paths_and_embeddings_output_are_not_estimated() {
        let mut usage = Usage::default();
        let mut refused = seen("hello", "");
        refused.status = Some(403);
        assert_eq!(fill(&refused, &mut usage), None);
        let mut unknown = seen("hello", "");
        unknown.operation = Some("unknown");
        assert_eq!(fill(&unknown, &mut usage), None);
        let mut session = seen("hello", "");
        session.operation = Some("realtime");
        assert_eq!(fill(&session, &mut usage), None);

        let mut embeddings = seen("hello world", "");
        embeddings.operation = Some("embeddings");
        embeddings.messages = None;
        let estimated = fill(&embeddings, &mut usage).unwrap();
        assert!(estimated.input && !estimated.output);
        assert_eq!(usage.input_tokens, Some(2));
        assert_eq!(usage.output_tokens, None);
    }
}
