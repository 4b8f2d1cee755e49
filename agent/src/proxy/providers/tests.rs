use super::*;

#[test]
fn openai_chat_request() {
    let body = br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hello"}]}]}"#;
    let info = parse_request("/v1/chat/completions", body);
    assert_eq!(info.operation, "chat");
    assert_eq!(info.model.as_deref(), Some("gpt-4o-mini"));
    assert!(info.stream);
    assert_eq!(info.messages, Some(2));
    assert_eq!(info.prompt_bytes, "be brief".len() + "hello".len());
    assert!(info.prompt_text.contains("hello"));
}

#[test]
fn azure_deployment_names_the_model() {
    let info = parse_request(
        "/openai/deployments/my-gpt4/chat/completions?api-version=2024-10-21",
        br#"{"messages":[]}"#,
    );
    assert_eq!(info.operation, "chat");
    assert_eq!(info.model.as_deref(), Some("my-gpt4"));
}

#[test]
fn gemini_and_bedrock_paths() {
    let info = parse_request(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
    );
    assert_eq!(
        (
            info.operation,
            info.model.as_deref(),
            info.stream,
            info.messages
        ),
        ("generate_content", Some("gemini-2.0-flash"), true, Some(1))
    );
    assert_eq!(info.prompt_bytes, 2);
    let info = parse_request(
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        br#"{"messages":[]}"#,
    );
    assert_eq!(info.operation, "converse");
    assert_eq!(
        info.model.as_deref(),
        Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
    );
}

#[test]
fn unknown_paths_and_bad_bodies_are_unknown_not_errors() {
    let info = parse_request("/v1/models", b"");
    assert_eq!(info.operation, "unknown");
    assert_eq!(info.model, None);
    let info = parse_request("/v1/chat/completions", b"{not json");
    assert_eq!(info.operation, "chat");
    assert_eq!(info.prompt_bytes, 0);
}

fn observe(event_stream: bool, chunks: &[&str]) -> (Usage, String) {
    let mut observer = ResponseObserver::new(event_stream);
    for chunk in chunks {
        observer.feed(chunk.as_bytes());
    }
    observer.finish()
}

#[test]
fn openai_usage_plain_and_streamed() {
    let (usage, text) = observe(
        false,
        &[
            r#"{"choices":[{"message":{"content":"Hi!"}}],"usage":{"prompt_tokens":12,"#,
            r#""completion_tokens":3}}"#,
        ],
    );
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(12), Some(3))
    );
    assert_eq!(text, "Hi!");
    let (usage, text) = observe(
        true,
        &[
            "data: {\"choices\":[{\"delta\":{\"content\":\"He\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ],
    );
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(9), Some(2))
    );
    assert_eq!(text, "He\nllo");
}

#[test]
fn anthropic_stream_usage_is_cumulative() {
    let (usage, text) = observe(
        true,
        &[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ],
    );
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(25), Some(15))
    );
    assert_eq!(text, "Hello");
}

#[test]
fn gemini_usage_from_sse_and_json_array() {
    let chunk = |n: u64| {
        format!(
            "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"t{n}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":4,\"candidatesTokenCount\":{n}}}}}"
        )
    };
    let (usage, _) = observe(
        true,
        &[&format!("data: {}\n\ndata: {}\n\n", chunk(1), chunk(7))],
    );
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(4), Some(7))
    );
    let (usage, text) = observe(false, &[&format!("[{},{}]", chunk(2), chunk(5))]);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(4), Some(5))
    );
    assert_eq!(text, "t2\nt5");
}

#[test]
fn error_shapes_match_each_provider() {
    let v: Value =
        serde_json::from_slice(&error_body(Family::OpenAi, Refusal::Policy, 403, "no")).unwrap();
    assert_eq!(v["error"]["message"], "no");
    assert_eq!(v["error"]["type"], "modelgate_policy");
    let v: Value = serde_json::from_slice(&error_body(
        Family::Anthropic,
        Refusal::Upstream,
        502,
        "down",
    ))
    .unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let v: Value =
        serde_json::from_slice(&error_body(Family::Gemini, Refusal::Policy, 403, "no")).unwrap();
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(v["error"]["code"], 403);
}
