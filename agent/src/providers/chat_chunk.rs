//! The common case of a streamed answer, read without building a JSON tree:
//! an OpenAI-style chat chunk (`choices[].delta.content`, a final `usage`).
//! A chunk of any other shape, or one this reading cannot take exactly as
//! the general one (`extract.rs`) would, is left to that reading: `read`
//! answers `None` and the caller parses the chunk as a `Value`.

use std::borrow::Cow;

use serde::{Deserialize, de::IgnoredAny};

use super::Usage;

/// Usage and the text pieces of one chat chunk.
pub struct ChatChunk<'a> {
    pub usage: Usage,
    pub texts: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    object: Cow<'a, str>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    // Where the general reading also looks for text or usage: a chunk
    // that has any of these goes to it.
    #[serde(default)]
    delta: Option<IgnoredAny>,
    #[serde(default)]
    content: Option<IgnoredAny>,
    #[serde(default)]
    candidates: Option<IgnoredAny>,
    #[serde(default)]
    output_text: Option<IgnoredAny>,
    #[serde(default)]
    message: Option<IgnoredAny>,
    #[serde(default)]
    response: Option<IgnoredAny>,
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
    // Other providers' names, which the general reading takes.
    #[serde(default)]
    input_tokens: Option<IgnoredAny>,
    #[serde(default)]
    output_tokens: Option<IgnoredAny>,
    #[serde(default, rename = "inputTokens")]
    input_tokens_camel: Option<IgnoredAny>,
    #[serde(default, rename = "outputTokens")]
    output_tokens_camel: Option<IgnoredAny>,
    #[serde(default)]
    input_tokens_details: Option<IgnoredAny>,
    #[serde(default)]
    output_tokens_details: Option<IgnoredAny>,
    #[serde(default)]
    cache_read_input_tokens: Option<IgnoredAny>,
    #[serde(default, rename = "cacheReadInputTokens")]
    cache_read_camel: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// An OpenAI chat chunk's usage and text, or `None` for anything else.
pub fn read(data: &str) -> Option<ChatChunk<'_>> {
    // Cheap refusals first: most other providers' events say so at once.
    if !data.contains("chat.completion.chunk") {
        return None;
    }
    let chunk: Chunk = serde_json::from_str(data).ok()?;
    let elsewhere = chunk.delta.is_some()
        || chunk.content.is_some()
        || chunk.candidates.is_some()
        || chunk.output_text.is_some()
        || chunk.message.is_some()
        || chunk.response.is_some()
        || chunk.usage_metadata.is_some();
    if chunk.object != "chat.completion.chunk" || elsewhere {
        return None;
    }
    let mut usage = Usage::default();
    if let Some(u) = chunk.usage {
        let other_names = u.input_tokens.is_some()
            || u.output_tokens.is_some()
            || u.input_tokens_camel.is_some()
            || u.output_tokens_camel.is_some()
            || u.input_tokens_details.is_some()
            || u.output_tokens_details.is_some()
            || u.cache_read_input_tokens.is_some()
            || u.cache_read_camel.is_some();
        if other_names {
            return None;
        }
        usage.input_tokens = u.prompt_tokens;
        usage.output_tokens = u.completion_tokens;
        usage.cache_read_input_tokens = u.prompt_tokens_details.and_then(|d| d.cached_tokens);
        usage.reasoning_output_tokens =
            u.completion_tokens_details.and_then(|d| d.reasoning_tokens);
    }
    let texts = chunk
        .choices
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.delta.and_then(|d| d.content).or(c.text))
        .collect();
    Some(ChatChunk { usage, texts })
}
