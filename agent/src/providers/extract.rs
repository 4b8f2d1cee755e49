//! Token usage (and output text) from responses as they stream past.

use std::time::Instant;

use serde_json::Value;

use super::{TextCollector, Usage, chat_chunk, sse::SseParser};

/// Non-streamed bodies are parsed when complete; past this they are passed
/// through unparsed (usage unknown) rather than held in memory.
const MAX_JSON_BODY: usize = 8 << 20;

/// Watches response bytes without holding up their delivery.
#[derive(Debug)]
pub struct ResponseObserver {
    sse: Option<SseParser>,
    buffer: Vec<u8>,
    buffer_overflow: bool,
    usage: Usage,
    output: TextCollector,
    /// SSE events seen (for a stream, the number of chunks).
    pub events: u64,
    chunks: Chunks,
}

/// Gaps kept per stream for `time_per_output_chunk`: past this (a stream of
/// more chunks) only the first ones are timed, so memory stays bounded.
const MAX_GAPS: usize = 16_384;

/// When a stream's chunks arrived.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Chunks {
    /// The first chunk (an SSE event with data).
    pub first: Option<Instant>,
    last: Option<Instant>,
    /// Seconds from the end of each chunk to the end of the next, for every
    /// chunk after the first (the GenAI conventions'
    /// `time_per_output_chunk`).
    pub gaps: Vec<f32>,
}

impl Chunks {
    fn arrived(&mut self, at: Instant) {
        if self.first.is_none() {
            self.first = Some(at);
        }
        if let Some(last) = self.last
            && self.gaps.len() < MAX_GAPS
        {
            self.gaps.push(at.duration_since(last).as_secs_f32());
        }
        self.last = Some(at);
    }
}

impl ResponseObserver {
    /// `event_stream`: the response's content type is text/event-stream.
    pub fn new(event_stream: bool) -> ResponseObserver {
        ResponseObserver {
            sse: event_stream.then(SseParser::default),
            buffer: Vec::new(),
            buffer_overflow: false,
            usage: Usage::default(),
            output: TextCollector::default(),
            events: 0,
            chunks: Chunks::default(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(mut sse) = self.sse.take() {
            sse.feed_borrowed(bytes, |_, data| self.on_event(data));
            self.sse = Some(sse);
        } else if !self.buffer_overflow {
            if self.buffer.len() + bytes.len() > MAX_JSON_BODY {
                self.buffer_overflow = true;
                self.buffer = Vec::new();
            } else {
                self.buffer.extend_from_slice(bytes);
            }
        }
    }

    fn on_event(&mut self, data: &str) {
        self.events += 1;
        if data == "[DONE]" {
            return;
        }
        if !data.is_empty() {
            self.chunks.arrived(Instant::now());
        }
        // Most chunks of most streams: read without a JSON tree.
        if let Some(chunk) = chat_chunk::read(data) {
            self.merge_usage(chunk.usage);
            for text in &chunk.texts {
                self.output.append(text);
            }
        } else if let Ok(value) = serde_json::from_str::<Value>(data) {
            self.absorb(&value, true);
        }
    }

    /// When the stream's chunks came (empty for a body that is not a
    /// stream).
    pub fn take_chunks(&mut self) -> Chunks {
        std::mem::take(&mut self.chunks)
    }

    /// Usage, and the output text with its whole length, once the body
    /// has ended.
    pub fn finish(&mut self) -> (Usage, String, usize) {
        if self.sse.is_none() && !self.buffer.is_empty() {
            let buffer = std::mem::take(&mut self.buffer);
            match serde_json::from_slice::<Value>(&buffer) {
                // Gemini's streamGenerateContent without alt=sse: an array
                // of the chunks an SSE stream would have carried.
                Ok(Value::Array(chunks)) => chunks.iter().for_each(|c| self.absorb(c, true)),
                Ok(value) => self.absorb(&value, false),
                Err(_) => {}
            }
        }
        let output = std::mem::take(&mut self.output);
        (self.usage, output.text, output.bytes)
    }

    fn absorb(&mut self, value: &Value, streamed: bool) {
        self.merge_usage(usage_of(value));
        // Past the cap the text is only counted: its length scales a token
        // estimate when the provider reports none.
        collect_output(value, streamed, &mut self.output);
    }

    fn merge_usage(&mut self, found: Usage) {
        // Later reports are cumulative (Anthropic's message_delta, Gemini's
        // chunks, OpenAI's final usage chunk): the latest wins.
        if found.input_tokens.is_some() {
            self.usage.input_tokens = found.input_tokens;
        }
        if found.output_tokens.is_some() {
            self.usage.output_tokens = found.output_tokens;
        }
        if found.cache_read_input_tokens.is_some() {
            self.usage.cache_read_input_tokens = found.cache_read_input_tokens;
        }
        if found.reasoning_output_tokens.is_some() {
            self.usage.reasoning_output_tokens = found.reasoning_output_tokens;
        }
    }
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_u64)
}

/// Every shape we know of, in one place.
pub fn usage_of(value: &Value) -> Usage {
    let candidates: [(&[&str], &[&str]); 6] = [
        // OpenAI chat/completions/embeddings (and compatible servers).
        (&["usage", "prompt_tokens"], &["usage", "completion_tokens"]),
        // Anthropic messages; OpenAI responses.
        (&["usage", "input_tokens"], &["usage", "output_tokens"]),
        // Anthropic message_start.
        (
            &["message", "usage", "input_tokens"],
            &["message", "usage", "output_tokens"],
        ),
        // OpenAI responses stream: response.completed.
        (
            &["response", "usage", "input_tokens"],
            &["response", "usage", "output_tokens"],
        ),
        // Gemini / Vertex.
        (
            &["usageMetadata", "promptTokenCount"],
            &["usageMetadata", "candidatesTokenCount"],
        ),
        // Bedrock converse.
        (&["usage", "inputTokens"], &["usage", "outputTokens"]),
    ];
    let mut usage = Usage::default();
    for (input, output) in candidates {
        usage.input_tokens = usage.input_tokens.or_else(|| u64_at(value, input));
        usage.output_tokens = usage.output_tokens.or_else(|| u64_at(value, output));
    }
    let first = |paths: &[&[&str]]| paths.iter().find_map(|path| u64_at(value, path));
    usage.cache_read_input_tokens = first(&[
        // OpenAI chat/completions.
        &["usage", "prompt_tokens_details", "cached_tokens"],
        // OpenAI responses (and its stream's response.completed).
        &["usage", "input_tokens_details", "cached_tokens"],
        &["response", "usage", "input_tokens_details", "cached_tokens"],
        // Anthropic messages, and message_start in a stream.
        &["usage", "cache_read_input_tokens"],
        &["message", "usage", "cache_read_input_tokens"],
        // Gemini / Vertex.
        &["usageMetadata", "cachedContentTokenCount"],
        // Bedrock converse.
        &["usage", "cacheReadInputTokens"],
    ]);
    usage.reasoning_output_tokens = first(&[
        // OpenAI chat/completions.
        &["usage", "completion_tokens_details", "reasoning_tokens"],
        // OpenAI responses.
        &["usage", "output_tokens_details", "reasoning_tokens"],
        &[
            "response",
            "usage",
            "output_tokens_details",
            "reasoning_tokens",
        ],
        // Gemini / Vertex: thinking tokens.
        &["usageMetadata", "thoughtsTokenCount"],
    ]);
    usage
}

fn collect_output(value: &Value, streamed: bool, out: &mut TextCollector) {
    // A stream's pieces continue one text; a whole answer's are separate.
    let mut add = |text: &str| {
        if streamed {
            out.append(text)
        } else {
            out.push(text)
        }
    };
    if let Some(choices) = value.get("choices").and_then(Value::as_array) {
        for choice in choices {
            let piece = if streamed {
                choice.get("delta").and_then(|d| d.get("content"))
            } else {
                choice.get("message").and_then(|m| m.get("content"))
            }
            .and_then(Value::as_str)
            .or_else(|| choice.get("text").and_then(Value::as_str));
            if let Some(piece) = piece {
                add(piece);
            }
        }
    }
    match value.get("delta") {
        // Anthropic: content_block_delta in a stream.
        Some(delta) if delta.get("text").is_some() => {
            if let Some(text) = delta.get("text").and_then(Value::as_str) {
                add(text);
            }
        }
        // OpenAI responses stream: response.output_text.delta.
        Some(Value::String(text))
            if value.get("type").and_then(Value::as_str) == Some("response.output_text.delta") =>
        {
            add(text)
        }
        // Anthropic: the answer's content blocks.
        _ => {
            if let Some(blocks) = value.get("content").and_then(Value::as_array) {
                for block in blocks {
                    if let Some(text) = block.get("text").and_then(Value::as_str) {
                        add(text);
                    }
                }
            }
        }
    }
    // Gemini: candidates[].content.parts[].text
    if let Some(candidates) = value.get("candidates").and_then(Value::as_array) {
        for candidate in candidates {
            if let Some(parts) = candidate
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array)
            {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        add(text);
                    }
                }
            }
        }
    }
    // OpenAI responses API.
    if let Some(text) = value.get("output_text").and_then(Value::as_str) {
        add(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general reading takes from one streamed event.
    fn generic(data: &str) -> Option<(Usage, String)> {
        let value: Value = serde_json::from_str(data).ok()?;
        let mut text = TextCollector::default();
        collect_output(&value, true, &mut text);
        Some((usage_of(&value), text.text))
    }

    #[test]
    fn the_chat_chunk_reading_agrees_with_the_general_one_or_declines() {
        let head = r#""id":"c","object":"chat.completion.chunk","created":1,"model":"m""#;
        let chunks = [
            format!(
                r#"{{{head},"choices":[{{"index":0,"delta":{{"content":"Hel"}},"finish_reason":null}}]}}"#
            ),
            format!(
                r#"{{{head},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}}}}],"usage":null}}"#
            ),
            format!(
                r#"{{{head},"choices":[],"usage":{{"prompt_tokens":8,"completion_tokens":20,"total_tokens":28,"prompt_tokens_details":{{"cached_tokens":4}},"completion_tokens_details":{{"reasoning_tokens":2}}}}}}"#
            ),
            format!(r#"{{{head},"choices":[{{"index":0,"text":"legacy"}}]}}"#),
            format!(
                r#"{{{head},"choices":[{{"delta":null,"text":"t"}},{{"delta":{{"content":null}},"text":"u"}},{{"delta":{{}}}}]}}"#
            ),
            format!(r#"{{{head},"choices":[{{"delta":{{"content":"\u00e9\n\"q\""}}}}]}}"#),
            // Shapes the chat reading must leave to the general one.
            format!(r#"{{{head},"choices":[{{"delta":{{"content":["a"]}}}}]}}"#),
            format!(r#"{{{head},"choices":[{{"delta":"x","text":"y"}}]}}"#),
            format!(
                r#"{{{head},"choices":[{{"delta":{{"content":"a"}}}}],"content":[{{"text":"hidden"}}]}}"#
            ),
            format!(
                r#"{{{head},"choices":[],"candidates":[{{"content":{{"parts":[{{"text":"g"}}]}}}}]}}"#
            ),
            format!(r#"{{{head},"choices":[],"usage":{{"input_tokens":3,"output_tokens":4}}}}"#),
            format!(r#"{{{head},"choices":[],"usage":{{"prompt_tokens":-1}}}}"#),
            format!(r#"{{{head},"choices":[],"usage":{{"prompt_tokens":1.5}}}}"#),
            format!(
                r#"{{{head},"choices":[{{"delta":{{"content":"a"}}}}],"choices":[{{"delta":{{"content":"b"}}}}]}}"#
            ),
            format!(r#"{{{head},"output_text":"o","choices":[]}}"#),
            r#"{"object":"chat.completion","choices":[{"message":{"content":"whole"}}]}"#
                .to_string(),
            r#"{"object":7,"choices":[{"delta":{"content":"chat.completion.chunk"}}]}"#.to_string(),
            format!(r#"{{{head},"choices":[{{"delta":{{"content":"a"}}}}]}} trailing"#),
        ];
        let mut declined = 0;
        for data in &chunks {
            let want = generic(data);
            match chat_chunk::read(data) {
                Some(chunk) => {
                    let mut text = TextCollector::default();
                    chunk.texts.iter().for_each(|t| text.append(t));
                    assert_eq!(Some((chunk.usage, text.text)), want, "{data}");
                }
                None => declined += 1,
            }
        }
        assert_eq!(declined, 12, "the shapes the chat reading must leave");
    }

    #[test]
    fn a_stream_is_read_the_same_whatever_its_chunking() {
        let stream = concat!(
            "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"He\"}}]}\n\n",
            "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\r\n\r\n",
            ": keep-alive\n\n",
            "event: message\ndata: {\"object\":\"chat.completion.chunk\",\"choices\":[],\n",
            "data: \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let read = |cut: usize| {
            let mut observer = ResponseObserver::new(true);
            for piece in stream.as_bytes().chunks(cut) {
                observer.feed(piece);
            }
            let events = observer.events;
            (observer.finish(), events)
        };
        let whole = read(stream.len());
        assert_eq!(whole.0.1, "Hello");
        assert_eq!(whole.0.0.input_tokens, Some(3));
        assert_eq!(whole.0.0.output_tokens, Some(2));
        assert_eq!(whole.1, 4);
        for cut in 1..40 {
            assert_eq!(read(cut), whole, "cut every {cut} bytes");
        }
    }
}
