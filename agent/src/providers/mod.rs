//! What a model request and its response mean: operation, model,
//! streaming, prompt size, token usage — for every supported API shape.
//! Detection is by path (what the server will do), with the catalog's `api`
//! deciding only the error shape of our own responses.

mod chat_chunk;
mod extract;
pub mod realtime;
pub mod sse;
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
    /// The model the upstream will serve.
    pub model: Option<String>,
    /// Another model name the request carries (an Azure body's `model`
    /// beside its deployment): model controls must allow it too.
    pub also_model: Option<String>,
    /// Why the request names two models where only one can be meant.
    pub model_conflict: Option<String>,
    pub stream: bool,
    pub messages: Option<usize>,
    /// Bytes of all text the request carries: messages, system, tools and
    /// their schemas, metadata (see [`text_bytes`]).
    pub prompt_bytes: usize,
    /// The prompt text itself, capped at `TEXT_CAP`.
    pub prompt_text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Input tokens read from the provider's prompt cache, where it says
    /// (`gen_ai.usage.cache_read.input_tokens`).
    pub cache_read_input_tokens: Option<u64>,
    /// Output tokens spent on reasoning, where the provider says
    /// (`gen_ai.usage.reasoning.output_tokens`).
    pub reasoning_output_tokens: Option<u64>,
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

/// [`parse_request_json`] of `body` as JSON (any other body has no JSON
/// fields).
pub fn parse_request(path: &str, body: &[u8]) -> RequestInfo {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    parse_request_json(path, json.as_ref())
}

/// What a request means, from its (normalised) path and its JSON body.
pub fn parse_request_json(path: &str, json: Option<&Value>) -> RequestInfo {
    let path_only = path.split('?').next().unwrap_or(path);
    let field = |name: &str| json.and_then(|v| v.get(name));
    let body_model = field("model").and_then(Value::as_str).map(str::to_string);
    let body_stream = field("stream").and_then(Value::as_bool).unwrap_or(false);

    let (operation, path_model, path_stream) = classify(path_only);
    let mut text = TextCollector::default();
    if let Some(v) = json {
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
    // The model is the one the upstream uses. Where the path names it
    // (Gemini, Vertex, Bedrock), the body's `model` is not read upstream,
    // so one that differs can only be there to mislead the policy.
    // Azure's deployment is the model served; the SDK also sends a `model`
    // that may differ (`azure_deployment=` with `model=`), so both are kept
    // and model controls apply to both.
    let (model, body_model_also, model_conflict) = match (path_model, body_model) {
        (Some(PathModel::Addressed(m)), Some(b)) if b != m => {
            let conflict = format!(
                "the path addresses model `{m}` but the body names `{b}`; the upstream would \
                 serve `{m}`"
            );
            (Some(m), None, Some(conflict))
        }
        (Some(PathModel::Addressed(m)), _) => (Some(m), None, None),
        (Some(PathModel::Deployment(d)), b) => {
            let also = b.filter(|b| *b != d);
            (Some(d), also, None)
        }
        (None, b) => (b, None, None),
    };
    RequestInfo {
        operation,
        model,
        also_model: body_model_also,
        model_conflict,
        stream: body_stream || path_stream,
        messages,
        prompt_bytes: json.map_or(0, text_bytes),
        prompt_text: text.text,
    }
}

/// Whether the API at `path` reads a JSON body (so a body that is not JSON
/// is not one it would accept as sent).
pub fn reads_json(path: &str) -> bool {
    classify(path.split('?').next().unwrap_or(path)).0 != "unknown"
}

/// A model named in the path.
enum PathModel {
    /// The path is the model's address (Gemini, Vertex, Bedrock).
    Addressed(String),
    /// An Azure OpenAI deployment.
    Deployment(String),
}

/// The operation, a model named in the path, and whether the path itself
/// asks for a stream.
fn classify(path: &str) -> (&'static str, Option<PathModel>, bool) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(last) = segments.last() {
        // Gemini / Vertex: .../models/{model}:generateContent; Vertex's
        // partner models (Anthropic, Mistral): ...:rawPredict.
        if let Some((model, method)) = last.split_once(':') {
            let op = match method {
                "generateContent" => Some(("generate_content", false)),
                "streamGenerateContent" => Some(("generate_content", true)),
                "embedContent" | "batchEmbedContents" => Some(("embeddings", false)),
                "countTokens" => Some(("count_tokens", false)),
                "rawPredict" | "predict" => Some(("predict", false)),
                "streamRawPredict" | "serverStreamingPredict" => Some(("predict", true)),
                _ => None,
            };
            if let Some((op, stream)) = op {
                return (
                    op,
                    Some(PathModel::Addressed(percent_decode(model))),
                    stream,
                );
            }
        }
        // Bedrock runtime: /model/{id}/converse[-stream] |
        // invoke[-with-response-stream]. The id may be an ARN whose `/` a
        // client did not escape, so every segment between is the id.
        if segments.first() == Some(&"model") && segments.len() >= 3 {
            let id = segments[1..segments.len() - 1]
                .iter()
                .map(|s| percent_decode(s))
                .collect::<Vec<_>>()
                .join("/");
            let model = Some(PathModel::Addressed(id));
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
    let deployment = segments
        .iter()
        .position(|s| *s == "deployments")
        .and_then(|i| segments.get(i + 1))
        .map(|s| PathModel::Deployment(percent_decode(s)));
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

/// Object keys that are a request schema's own fields, not text: every
/// other key (a `metadata` entry, a tool parameter's name) is read by the
/// model, or at least leaves the host, and counts as prompt text.
const SCHEMA_KEYS: &[&str] = &[
    "$defs",
    "$ref",
    "additionalProperties",
    "allOf",
    "annotations",
    "anthropic_version",
    "anyOf",
    "args",
    "arguments",
    "audio",
    "budget_tokens",
    "cache_control",
    "candidateCount",
    "category",
    "const",
    "content",
    "contents",
    "data",
    "default",
    "definitions",
    "description",
    "detail",
    "dimensions",
    "effort",
    "encoding_format",
    "enum",
    "file",
    "file_data",
    "file_id",
    "filename",
    "format",
    "frequency_penalty",
    "function",
    "function_call",
    "functionCall",
    "functionDeclarations",
    "functionResponse",
    "functions",
    "generation_config",
    "generationConfig",
    "id",
    "image_url",
    "include",
    "include_usage",
    "inferenceConfig",
    "inline_data",
    "inlineData",
    "input",
    "input_audio",
    "input_schema",
    "input_type",
    "inputSchema",
    "instructions",
    "items",
    "json",
    "json_schema",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_output_tokens",
    "max_tokens",
    "maxItems",
    "maxLength",
    "maximum",
    "maxOutputTokens",
    "maxTokens",
    "media_type",
    "messages",
    "metadata",
    "mime_type",
    "mimeType",
    "minItems",
    "minLength",
    "minimum",
    "modalities",
    "model",
    "n",
    "name",
    "nullable",
    "oneOf",
    "parallel_tool_calls",
    "parameters",
    "parts",
    "pattern",
    "prediction",
    "presence_penalty",
    "previous_response_id",
    "prompt",
    "properties",
    "reasoning",
    "reasoning_effort",
    "refusal",
    "required",
    "response",
    "response_format",
    "responseMimeType",
    "responseSchema",
    "role",
    "safetySettings",
    "schema",
    "seed",
    "service_tier",
    "source",
    "stop",
    "stop_sequences",
    "stopSequences",
    "store",
    "stream",
    "stream_options",
    "strict",
    "system",
    "system_instruction",
    "systemInstruction",
    "temperature",
    "text",
    "thinking",
    "threshold",
    "title",
    "tool_call_id",
    "tool_calls",
    "tool_choice",
    "tool_result",
    "tool_use",
    "tool_use_id",
    "toolConfig",
    "tools",
    "toolSpec",
    "top_k",
    "top_logprobs",
    "top_p",
    "topK",
    "topP",
    "truncation",
    "type",
    "url",
    "user",
    "verbosity",
    "voice",
];

/// Values of these keys are identifiers and enums (`"role": "user"`), not
/// text — while short; a long one counts whatever its key.
const ENUM_KEYS: &[&str] = &[
    "anthropic_version",
    "detail",
    "encoding_format",
    "format",
    "id",
    "media_type",
    "mime_type",
    "mimeType",
    "model",
    "object",
    "reasoning_effort",
    "role",
    "service_tier",
    "tool_call_id",
    "tool_use_id",
    "type",
    "user",
    "voice",
];
const ENUM_MAX: usize = 64;

/// Keys whose values are inline binary (base64 images, audio, files):
/// content the model reads, but not as text.
const BINARY_KEYS: &[&str] = &["data", "file_data", "b64_json"];

/// Bytes of all text in a request body that the model reads or that leaves
/// with it: every string at any depth and every key that is not a schema
/// field, less enum-like values and inline binary. A tool description, a
/// JSON schema's property names and a `metadata` map all count, so text
/// cannot be moved out of `messages` to get past `max_prompt_bytes`.
pub fn text_bytes(value: &Value) -> usize {
    let mut total = 0;
    let mut stack: Vec<(Option<&str>, &Value)> = vec![(None, value)];
    while let Some((key, v)) = stack.pop() {
        match v {
            Value::String(s) => {
                let enum_like = s.len() <= ENUM_MAX && key.is_some_and(|k| ENUM_KEYS.contains(&k));
                let binary = key.is_some_and(|k| BINARY_KEYS.contains(&k))
                    || (s.starts_with("data:") && s.contains(";base64,"));
                if !enum_like && !binary {
                    total += s.len();
                }
            }
            Value::Array(items) => stack.extend(items.iter().map(|i| (key, i))),
            Value::Object(map) => {
                for (k, v) in map {
                    if !SCHEMA_KEYS.contains(&k.as_str()) {
                        total += k.len();
                    }
                    stack.push((Some(k.as_str()), v));
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
    total
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

    /// Adds a separate piece of text (a message, a content block): on a
    /// line of its own.
    pub fn push(&mut self, s: &str) {
        if !self.text.is_empty() && self.text.len() < TEXT_CAP {
            self.text.push('\n');
        }
        self.append(s);
    }

    /// Adds the continuation of the text so far (a stream's delta), as the
    /// client reads it: no separator.
    pub fn append(&mut self, s: &str) {
        self.bytes += s.len();
        if self.text.len() < TEXT_CAP {
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
