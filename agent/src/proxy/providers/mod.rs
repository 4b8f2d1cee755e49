//! What a model request and its response mean: operation, model,
//! streaming, prompt size, token usage — for every supported API shape.
//! Detection is by path (what the server will do), with the catalog's `api`
//! deciding only the error shape of our own responses.

mod extract;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde_json::{Value, json};

pub use self::extract::ResponseObserver;
use crate::catalog::Api;

/// Prompt and output text kept for `store_prompts: full|hash`, at most.
pub const TEXT_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `chat`, `completion`, `responses`, `embeddings`, `messages`,
    /// `generate_content`, `converse`, `invoke` or `unknown`.
    pub operation: &'static str,
    pub model: Option<String>,
    pub stream: bool,
    pub messages: Option<usize>,
    /// Bytes of prompt text (messages, system, input, contents).
    pub prompt_bytes: usize,
    /// The prompt text itself, capped at `TEXT_CAP`.
    pub prompt_text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// The API family: which request/response shapes and error shape apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Family {
    pub fn of(api: Api) -> Family {
        match api {
            Api::Anthropic => Family::Anthropic,
            Api::Gemini | Api::Vertex => Family::Gemini,
            Api::Bedrock => Family::Bedrock,
            Api::Openai
            | Api::AzureOpenai
            | Api::OpenaiCompatible
            | Api::Mistral
            | Api::Cohere
            | Api::Huggingface => Family::OpenAi,
        }
    }
}

pub fn parse_request(path: &str, body: &[u8]) -> RequestInfo {
    let path_only = path.split('?').next().unwrap_or(path);
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| json.as_ref().and_then(|v| v.get(name));
    let body_model = field("model").and_then(Value::as_str).map(str::to_string);
    let body_stream = field("stream").and_then(Value::as_bool).unwrap_or(false);

    let (operation, path_model, path_stream) = classify(path_only);
    let mut text = TextCollector::default();
    if let Some(v) = &json {
        for key in [
            "messages",
            "system",
            "input",
            "prompt",
            "contents",
            "instructions",
        ] {
            if let Some(part) = v.get(key) {
                text.collect(part);
            }
        }
        if let Some(system) = v.get("systemInstruction") {
            text.collect(system);
        }
    }
    let messages = field("messages")
        .or_else(|| field("contents"))
        .and_then(Value::as_array)
        .map(Vec::len);
    RequestInfo {
        operation,
        model: body_model.or(path_model),
        stream: body_stream || path_stream,
        messages,
        prompt_bytes: text.bytes,
        prompt_text: text.text,
    }
}

/// The operation, a model named in the path, and whether the path itself
/// asks for a stream.
fn classify(path: &str) -> (&'static str, Option<String>, bool) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let after = |name: &str| {
        segments
            .iter()
            .position(|s| *s == name)
            .and_then(|i| segments.get(i + 1))
            .map(|s| percent_decode(s))
    };
    if let Some(last) = segments.last() {
        // Gemini / Vertex: .../models/{model}:generateContent
        if let Some((model, method)) = last.split_once(':') {
            let op = match method {
                "generateContent" => Some(("generate_content", false)),
                "streamGenerateContent" => Some(("generate_content", true)),
                "embedContent" | "batchEmbedContents" => Some(("embeddings", false)),
                "countTokens" => Some(("count_tokens", false)),
                _ => None,
            };
            if let Some((op, stream)) = op {
                return (op, Some(percent_decode(model)), stream);
            }
        }
        // Bedrock runtime: /model/{id}/converse[-stream] | invoke[-with-response-stream]
        if segments.first() == Some(&"model") && segments.len() == 3 {
            let model = Some(percent_decode(segments[1]));
            match *last {
                "converse" => return ("converse", model, false),
                "converse-stream" => return ("converse", model, true),
                "invoke" => return ("invoke", model, false),
                "invoke-with-response-stream" => return ("invoke", model, true),
                _ => {}
            }
        }
    }
    // Azure OpenAI: /openai/deployments/{deployment}/chat/completions
    let deployment = after("deployments");
    let op = if path.ends_with("/chat/completions") {
        "chat"
    } else if path.ends_with("/completions") {
        "completion"
    } else if path.ends_with("/responses") {
        "responses"
    } else if path.ends_with("/embeddings") {
        "embeddings"
    } else if path.ends_with("/messages") {
        "messages"
    } else {
        "unknown"
    };
    (op, deployment, false)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Gathers the text of prompt-like JSON (strings at any depth under the
/// keys that carry text), counting all bytes but keeping at most TEXT_CAP.
#[derive(Debug, Default)]
pub struct TextCollector {
    pub bytes: usize,
    pub text: String,
}

impl TextCollector {
    pub fn collect(&mut self, value: &Value) {
        self.walk(value, 0);
    }

    fn walk(&mut self, value: &Value, depth: usize) {
        // JSON nesting is bounded by serde_json (128); this bound keeps the
        // walk cheap on pathological inputs all the same.
        if depth > 32 {
            return;
        }
        match value {
            Value::String(s) => self.push(s),
            Value::Array(items) => items.iter().for_each(|v| self.walk(v, depth + 1)),
            Value::Object(map) => {
                for (key, v) in map {
                    match key.as_str() {
                        "text" | "content" | "parts" | "input" | "prompt" | "system" => {
                            self.walk(v, depth + 1)
                        }
                        _ if v.is_array() || v.is_object() => self.walk(v, depth + 1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    pub fn push(&mut self, s: &str) {
        self.bytes += s.len();
        if self.text.len() < TEXT_CAP {
            if !self.text.is_empty() {
                self.text.push('\n');
            }
            let room = TEXT_CAP.saturating_sub(self.text.len());
            let mut cut = s.len().min(room);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&s[..cut]);
        }
    }
}

/// Why the proxy itself answers instead of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Policy,
    Upstream,
    TooLarge,
    Budget,
    /// The client's request was malformed, ambiguous or too slow.
    BadRequest,
}

/// The last event of a stream that broke off upstream, in the provider's
/// own shape, so the SDK raises it as an API error with our message
/// instead of failing on a truncated stream.
pub fn stream_error(family: Family, message: &str) -> Bytes {
    let body = error_body(family, Refusal::Upstream, 502, message);
    let body = String::from_utf8_lossy(&body);
    Bytes::from(match family {
        Family::Anthropic => format!("event: error\ndata: {body}\n\n"),
        _ => format!("data: {body}\n\n"),
    })
}

/// An error response in the provider's own shape, so the SDK shows the
/// message to its user as it would any API error.
pub fn error_body(family: Family, refusal: Refusal, status: u16, message: &str) -> Bytes {
    let (openai_type, anthropic_type, gemini_status, code) = match refusal {
        Refusal::Policy => (
            "modelgate_policy",
            "permission_error",
            "PERMISSION_DENIED",
            "blocked_by_policy",
        ),
        Refusal::Upstream => (
            "upstream_error",
            "api_error",
            "UNAVAILABLE",
            "upstream_unavailable",
        ),
        Refusal::TooLarge => (
            "invalid_request_error",
            "request_too_large",
            "INVALID_ARGUMENT",
            "request_too_large",
        ),
        Refusal::Budget => (
            "rate_limit_exceeded",
            "rate_limit_error",
            "RESOURCE_EXHAUSTED",
            "budget_exceeded",
        ),
        Refusal::BadRequest => (
            "invalid_request_error",
            "invalid_request_error",
            "INVALID_ARGUMENT",
            "bad_request",
        ),
    };
    let body = match family {
        Family::OpenAi => json!({
            "error": {"message": message, "type": openai_type, "code": code, "param": null}
        }),
        Family::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_type, "message": message}
        }),
        Family::Gemini => json!({
            "error": {"code": status, "message": message, "status": gemini_status}
        }),
        Family::Bedrock => json!({"message": message, "__type": code}),
    };
    Bytes::from(body.to_string())
}
