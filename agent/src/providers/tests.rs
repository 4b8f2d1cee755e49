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
    let (usage, text, _) = observer.finish();
    (usage, text)
}

#[test]
fn a_responses_stream_text_is_collected() {
    let (_, text) = observe(
        true,
        &[
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"lo\"}\n\n",
        ],
    );
    assert_eq!(text, "Hello");
}

#[test]
fn output_past_the_kept_text_is_still_measured() {
    let delta = "x".repeat(1000);
    let chunk = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{delta}\"}}}}]}}\n\n");
    let mut observer = ResponseObserver::new(true);
    for _ in 0..200 {
        observer.feed(chunk.as_bytes());
    }
    let (_, text, bytes) = observer.finish();
    assert_eq!(text.len(), super::TEXT_CAP);
    assert_eq!(bytes, 200_000);
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
    assert_eq!(text, "Hello", "a stream's deltas are one text");
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
    assert_eq!(text, "t2t5");
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

#[test]
fn cache_read_and_reasoning_tokens_where_providers_report_them() {
    let details = |body: &str| {
        let (usage, _) = observe(false, &[body]);
        (usage.cache_read_input_tokens, usage.reasoning_output_tokens)
    };
    // OpenAI chat/completions.
    assert_eq!(
        details(
            r#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,
            "prompt_tokens_details":{"cached_tokens":1920},
            "completion_tokens_details":{"reasoning_tokens":256}}}"#
        ),
        (Some(1920), Some(256))
    );
    // OpenAI responses.
    assert_eq!(
        details(
            r#"{"usage":{"input_tokens":50,"output_tokens":9,
            "input_tokens_details":{"cached_tokens":32},
            "output_tokens_details":{"reasoning_tokens":4}}}"#
        ),
        (Some(32), Some(4))
    );
    // Anthropic: cache reads, no reasoning count.
    assert_eq!(
        details(
            r#"{"usage":{"input_tokens":21,"output_tokens":3,"cache_read_input_tokens":188086,
            "cache_creation_input_tokens":0}}"#
        ),
        (Some(188086), None)
    );
    // Gemini.
    assert_eq!(
        details(
            r#"{"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,
            "cachedContentTokenCount":8,"thoughtsTokenCount":120}}"#
        ),
        (Some(8), Some(120))
    );
    // Nothing said: unknown, not zero.
    assert_eq!(
        details(r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
        (None, None)
    );
    // Streamed: OpenAI's final usage chunk, the responses API's
    // response.completed, Anthropic's message_start.
    let (usage, _) = observe(
        true,
        &[
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":6},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n",
            "data: [DONE]\n\n",
        ],
    );
    assert_eq!(
        (usage.cache_read_input_tokens, usage.reasoning_output_tokens),
        (Some(6), Some(1))
    );
    let (usage, _) = observe(
        true,
        &[
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":7,\"input_tokens_details\":{\"cached_tokens\":3},\"output_tokens_details\":{\"reasoning_tokens\":2}}}}\n\n",
        ],
    );
    assert_eq!(
        (usage.cache_read_input_tokens, usage.reasoning_output_tokens),
        (Some(3), Some(2))
    );
    let (usage, _) = observe(
        true,
        &[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":4,\"output_tokens\":1,\"cache_read_input_tokens\":900}}}\n\n",
        ],
    );
    assert_eq!(usage.cache_read_input_tokens, Some(900));
}

#[test]
fn a_stream_times_its_first_chunk_and_the_gaps_after_it() {
    let mut observer = ResponseObserver::new(true);
    observer.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
    std::thread::sleep(std::time::Duration::from_millis(30));
    observer.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n");
    observer.feed(b": keep-alive\n\ndata: [DONE]\n\n");
    let chunks = observer.take_chunks();
    assert!(chunks.first.is_some());
    assert_eq!(chunks.gaps.len(), 1, "one gap: after the second chunk only");
    assert!(chunks.gaps[0] >= 0.03, "{:?}", chunks.gaps);
    // A body that is not a stream has no chunks.
    let mut plain = ResponseObserver::new(false);
    plain.feed(br#"{"usage":{"prompt_tokens":1}}"#);
    assert_eq!(plain.take_chunks(), Default::default());
}
