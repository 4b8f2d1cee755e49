//! What a realtime (WebSocket) session means: the model it serves, the
//! text it carries and the tokens the provider reports — OpenAI Realtime
//! (and Azure's), and Gemini Live.

use serde_json::Value;

use super::{RequestInfo, TextCollector, Usage, percent_decode};

/// The session as its opening request names it: the model from the query
/// (`?model=` for OpenAI, `?deployment=` for Azure, whose `model` must then
/// be allowed too); Gemini Live names it only in its first message. A query
/// naming two models, in any spelling of the key, is a conflict: which one
/// a server reads is its own business, so the policy cannot know.
pub fn session_info(query: Option<&str>, azure: bool) -> RequestInfo {
    let values = |name: &str| -> Vec<String> {
        let mut found: Vec<String> = query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| percent_decode(&key.replace('+', " ")) == name)
            .map(|(_, value)| percent_decode(&value.replace('+', " ")))
            .filter(|value| !value.is_empty())
            .collect();
        found.dedup();
        found
    };
    let (models, deployments) = (values("model"), values("deployment"));
    let (primary, other) = if azure {
        (&deployments, &models)
    } else {
        (&models, &deployments)
    };
    let model_conflict = (primary.len() > 1 || other.len() > 1).then(|| {
        format!(
            "the session's URL names more than one model ({}); name one",
            [primary.as_slice(), other.as_slice()].concat().join(", ")
        )
    });
    let model = primary.first().or(other.first()).cloned();
    let also_model = other.first().filter(|_| !primary.is_empty()).cloned();
    RequestInfo {
        operation: "realtime",
        model,
        also_model: also_model.filter(|also| Some(also) != primary.first()),
        model_conflict,
        ..RequestInfo::default()
    }
}

/// What one client message asks for, where the policy must hear of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientMessage {
    /// A model the message switches the session to (`session.update`'s
    /// `session.model`, Gemini's `setup.model`).
    pub model: Option<String>,
    /// The text the model will read from this message.
    pub text: String,
}

/// Everything read from a session's messages, both ways.
#[derive(Debug, Default)]
pub struct SessionObserver {
    /// The model the provider says it serves (`session.created`).
    pub served_model: Option<String>,
    usage: Usage,
    output: TextCollector,
    prompt: TextCollector,
    /// Messages each way.
    pub from_client: u64,
    pub from_upstream: u64,
}

impl SessionObserver {
    /// A text message from the client; binary messages carry audio only.
    pub fn client_text(&mut self, text: &str) -> ClientMessage {
        self.from_client += 1;
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return ClientMessage::default();
        };
        let mut said = TextCollector::default();
        let str_at = |path: &[&str]| {
            path.iter()
                .try_fold(&value, |v, key| v.get(key))
                .and_then(Value::as_str)
        };
        let model = match value.get("type").and_then(Value::as_str) {
            Some("session.update") => {
                if let Some(instructions) = value.pointer("/session/instructions") {
                    said.collect(instructions);
                }
                str_at(&["session", "model"]).map(str::to_string)
            }
            Some("conversation.item.create") => {
                if let Some(item) = value.get("item") {
                    said.collect(item);
                }
                None
            }
            Some("response.create") => {
                if let Some(response) = value.get("response") {
                    for key in ["instructions", "input"] {
                        if let Some(part) = response.get(key) {
                            said.collect(part);
                        }
                    }
                }
                None
            }
            Some(_) => None,
            // Gemini Live: one top-level field names the message.
            None => {
                for key in ["clientContent", "realtimeInput", "client_content"] {
                    if let Some(part) = value.get(key) {
                        said.collect(part);
                    }
                }
                if let Some(setup) = value.get("setup") {
                    for key in ["systemInstruction", "system_instruction"] {
                        if let Some(part) = setup.get(key) {
                            said.collect(part);
                        }
                    }
                }
                str_at(&["setup", "model"]).map(|m| m.trim_start_matches("models/").to_string())
            }
        };
        if !said.text.is_empty() {
            self.prompt.push(&said.text);
        }
        ClientMessage {
            model,
            text: said.text,
        }
    }

    /// A text message from the provider.
    pub fn upstream_text(&mut self, text: &str) {
        self.from_upstream += 1;
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let num = |path: &str| value.pointer(path).and_then(Value::as_u64);
        match value.get("type").and_then(Value::as_str) {
            Some("session.created" | "session.updated") => {
                if let Some(model) = value.pointer("/session/model").and_then(Value::as_str) {
                    self.served_model = Some(model.to_string());
                }
            }
            // One per response, each with that response's usage.
            Some("response.done") => add(
                &mut self.usage,
                Usage {
                    input_tokens: num("/response/usage/input_tokens"),
                    output_tokens: num("/response/usage/output_tokens"),
                    cache_read_input_tokens: num(
                        "/response/usage/input_token_details/cached_tokens",
                    ),
                    reasoning_output_tokens: None,
                },
            ),
            Some(kind) if kind.ends_with(".delta") && kind.contains("text") => {
                if let Some(delta) = value.get("delta").and_then(Value::as_str) {
                    self.output.push(delta);
                }
            }
            Some(kind) if kind.ends_with("transcript.delta") => {
                if let Some(delta) = value.get("delta").and_then(Value::as_str) {
                    self.output.push(delta);
                }
            }
            Some(_) => {}
            None => {
                // Gemini Live reports each turn's usage with the turn.
                if value.get("usageMetadata").is_some() {
                    add(
                        &mut self.usage,
                        Usage {
                            input_tokens: num("/usageMetadata/promptTokenCount"),
                            output_tokens: num("/usageMetadata/responseTokenCount")
                                .or_else(|| num("/usageMetadata/candidatesTokenCount")),
                            cache_read_input_tokens: num("/usageMetadata/cachedContentTokenCount"),
                            reasoning_output_tokens: num("/usageMetadata/thoughtsTokenCount"),
                        },
                    );
                }
                if let Some(parts) = value.pointer("/serverContent/modelTurn/parts") {
                    let mut said = TextCollector::default();
                    said.collect(parts);
                    if !said.text.is_empty() {
                        self.output.push(&said.text);
                    }
                }
                if let Some(text) = value
                    .pointer("/serverContent/outputTranscription/text")
                    .and_then(Value::as_str)
                {
                    self.output.push(text);
                }
            }
        }
    }

    /// The session's usage, prompt text and output text.
    pub fn finish(&mut self) -> (Usage, String, String) {
        (
            self.usage,
            std::mem::take(&mut self.prompt.text),
            std::mem::take(&mut self.output.text),
        )
    }
}

fn add(total: &mut Usage, more: Usage) {
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    total.input_tokens = sum(total.input_tokens, more.input_tokens);
    total.output_tokens = sum(total.output_tokens, more.output_tokens);
    total.cache_read_input_tokens =
        sum(total.cache_read_input_tokens, more.cache_read_input_tokens);
    total.reasoning_output_tokens =
        sum(total.reasoning_output_tokens, more.reasoning_output_tokens);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_comes_from_the_query_and_azure_names_a_deployment() {
        let info = session_info(Some("model=gpt-realtime%2Dmini&x=1"), false);
        assert_eq!(info.operation, "realtime");
        assert_eq!(info.model.as_deref(), Some("gpt-realtime-mini"));
        assert_eq!(info.model_conflict, None);
        let azure = session_info(
            Some("api-version=2025-04-01&deployment=rt-prod&model=x"),
            true,
        );
        assert_eq!(azure.model.as_deref(), Some("rt-prod"));
        assert_eq!(azure.also_model.as_deref(), Some("x"));
        assert_eq!(session_info(Some("model="), false).model, None);
        assert_eq!(session_info(None, false).model, None);
    }

    #[test]
    fn a_query_cannot_name_one_model_for_the_policy_and_another_for_the_server() {
        // Two `model`s, one spelled with an escaped key: a conflict.
        let two = session_info(Some("model=gpt-realtime&mod%65l=gpt-4o-realtime"), false);
        assert!(two.model_conflict.is_some(), "{two:?}");
        // A `deployment` beside OpenAI's `model`: both must be allowed.
        let both = session_info(Some("deployment=gpt-realtime&model=gpt-4o-realtime"), false);
        assert_eq!(both.model.as_deref(), Some("gpt-4o-realtime"));
        assert_eq!(both.also_model.as_deref(), Some("gpt-realtime"));
        // The same model twice is one model.
        let same = session_info(Some("model=a&model=a"), false);
        assert_eq!(
            (same.model.as_deref(), same.model_conflict),
            (Some("a"), None)
        );
    }

    #[test]
    fn openai_messages_give_the_model_text_and_summed_usage() {
        let mut seen = SessionObserver::default();
        let update = seen.client_text(
            r#"{"type":"session.update","session":{"type":"realtime","model":"gpt-4o-realtime","instructions":"be terse"}}"#,
        );
        assert_eq!(update.model.as_deref(), Some("gpt-4o-realtime"));
        assert_eq!(update.text, "be terse");
        let item = seen.client_text(
            r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hello there"}]}}"#,
        );
        assert_eq!(item.model, None);
        assert!(item.text.contains("hello there"), "{item:?}");
        seen.upstream_text(r#"{"type":"session.created","session":{"model":"gpt-realtime"}}"#);
        seen.upstream_text(r#"{"type":"response.output_text.delta","delta":"Hi"}"#);
        seen.upstream_text(r#"{"type":"response.output_audio_transcript.delta","delta":"you"}"#);
        for _ in 0..2 {
            seen.upstream_text(
                r#"{"type":"response.done","response":{"usage":{"total_tokens":30,"input_tokens":12,"output_tokens":18,"input_token_details":{"cached_tokens":4}}}}"#,
            );
        }
        seen.upstream_text("not json");
        let (usage, prompt, output) = seen.finish();
        assert_eq!(usage.input_tokens, Some(24));
        assert_eq!(usage.output_tokens, Some(36));
        assert_eq!(usage.cache_read_input_tokens, Some(8));
        assert!(prompt.contains("be terse") && prompt.contains("hello there"));
        assert_eq!(output, "Hi\nyou");
        assert_eq!(seen.served_model.as_deref(), Some("gpt-realtime"));
        assert_eq!((seen.from_client, seen.from_upstream), (2, 6));
    }

    #[test]
    fn gemini_live_names_its_model_in_setup_and_reports_usage_per_turn() {
        let mut seen = SessionObserver::default();
        let setup = seen.client_text(
            r#"{"setup":{"model":"models/gemini-2.0-flash-live-001","systemInstruction":{"parts":[{"text":"sys"}]}}}"#,
        );
        assert_eq!(setup.model.as_deref(), Some("gemini-2.0-flash-live-001"));
        let turn = seen.client_text(
            r#"{"clientContent":{"turns":[{"role":"user","parts":[{"text":"what is up"}]}],"turnComplete":true}}"#,
        );
        assert!(turn.text.contains("what is up"));
        seen.upstream_text(
            r#"{"serverContent":{"modelTurn":{"parts":[{"text":"not much"}]},"turnComplete":true},"usageMetadata":{"promptTokenCount":9,"responseTokenCount":3,"totalTokenCount":12}}"#,
        );
        let (usage, _, output) = seen.finish();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (Some(9), Some(3))
        );
        assert_eq!(output, "not much");
    }
}
