//! The cases of the evasion corpus: each hides its own AWS-shaped key
//! (`AKIAEVASIONCASE000NN`, so a leak names its case) where a lenient
//! upstream would still read it, or breaks a request/path/model/size rule
//! the way an upstream would still honour.
//!
//! Bodies are recipes for tests/standin/evasion_client.py (compression,
//! charsets and multipart are built there); text-level encodings (base64,
//! hex, percent, fullwidth) are built here.

use serde_json::{Value, json};

pub const CHAT: &str = "/v1/chat/completions";
const TRANSCRIBE: &str = "/v1/audio/transcriptions";

/// Refusal outcomes a case accepts.
pub const DATA: &[&str] = &["data_blocked"];
/// A body that is not strict UTF-8 JSON may be read (and the key found) or
/// refused as unreadable.
pub const DATA_OR_UNREADABLE: &[&str] = &["data_blocked", "unreadable"];
pub const UNREADABLE: &[&str] = &["unreadable"];
pub const BOMB: &[&str] = &["unreadable", "too_large"];
pub const MODEL: &[&str] = &["model_conflict", "model_refused"];
pub const MODEL_REFUSED: &[&str] = &["model_refused"];
pub const TOO_LARGE: &[&str] = &["too_large"];
pub const PATH_BLOCKED: &[&str] = &["blocked"];

pub struct Case {
    pub name: &'static str,
    /// The key this case hides, if any.
    pub key: Option<String>,
    pub request: Request,
    pub expect: Expect,
}

pub struct Request {
    pub method: &'static str,
    /// Sent verbatim: no dot-segment or slash clean-up.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// A body recipe (see evasion_client.py).
    pub body: Option<Value>,
}

pub enum Expect {
    /// A 4xx with `x-modelgate-error: 1`, one audit record `refused` with one
    /// of `outcomes`, nothing upstream. When the outcome is `data_blocked`,
    /// the record's `findings` must show `finding`.
    Refused {
        outcomes: &'static [&'static str],
        finding: Finding,
    },
    /// A 200; the audit record counts one `class` in `redacted`; upstream
    /// reads `[REDACTED:<class>]` and never `original`.
    Redacted {
        class: &'static str,
        original: &'static str,
    },
    /// A benign control: a 200, not refused, and the upstream read `marker`.
    Passes { marker: &'static str },
}

/// What a `data_blocked` record's `findings` must hold (loosely: the
/// engineer may refine the names).
pub struct Finding {
    /// A finding of this class; `None`: any class (an encoded key may be
    /// reported under the encoding's own class, e.g. `high-entropy`).
    pub class: Option<&'static str>,
    /// One of its `where` entries starts with this (`body`, `body-key`,
    /// `query`, `header:`, `joined`, `part:`); `None`: not checked.
    pub place: Option<&'static str>,
}

const AWS: Option<&str> = Some("aws-access-key");

fn at(place: &'static str) -> Finding {
    Finding {
        class: AWS,
        place: Some(place),
    }
}

fn aws() -> Finding {
    Finding {
        class: AWS,
        place: None,
    }
}

fn encoded() -> Finding {
    Finding {
        class: None,
        place: None,
    }
}

fn encoded_at(place: &'static str) -> Finding {
    Finding {
        class: None,
        place: Some(place),
    }
}

fn no_finding() -> Finding {
    encoded()
}

impl Request {
    fn post(path: impl Into<String>, body: Value) -> Request {
        Request {
            method: "POST",
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Some(body),
        }
    }

    fn get(path: impl Into<String>) -> Request {
        Request {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
        self
    }

    fn encoding(self, coding: &str) -> Request {
        self.header("content-encoding", coding)
    }
}

// ---------------------------------------------------------------- recipes

fn json_body(value: Value) -> Value {
    json!({ "json": value })
}

fn text(raw: impl Into<String>) -> Value {
    json!({ "text": raw.into() })
}

fn raw_hex(hex: &str) -> Value {
    json!({ "hex": hex })
}

fn concat(parts: Vec<Value>) -> Value {
    json!({ "concat": parts })
}

fn compressed(algorithm: &str, of: Value) -> Value {
    json!({ "compress": algorithm, "of": of })
}

fn charset(name: &str, of: Value) -> Value {
    json!({ "charset": name, "of": of })
}

fn multipart(boundary: &str, parts: Vec<Value>) -> Value {
    json!({ "multipart": parts, "boundary": boundary })
}

fn part(name: &str, filename: Option<&str>, headers: &[(&str, &str)], body: Value) -> Value {
    let mut part = json!({ "name": name, "headers": headers, "body": body });
    if let Some(filename) = filename {
        part["filename"] = json!(filename);
    }
    part
}

fn upload(boundary: &str, parts: Vec<Value>) -> Request {
    Request::post(TRANSCRIBE, multipart(boundary, parts)).header(
        "content-type",
        &format!("multipart/form-data; boundary={boundary}"),
    )
}

// ---------------------------------------------------------------- texts

fn chat(content: impl Into<Value>) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{ "role": "user", "content": content.into() }],
    })
}

fn chat_messages(contents: &[&str]) -> Value {
    let messages: Vec<Value> = contents
        .iter()
        .map(|c| json!({ "role": "user", "content": c }))
        .collect();
    json!({ "model": "gpt-4o-mini", "messages": messages })
}

fn say(key: &str) -> String {
    format!("deploy with {key} tonight")
}

/// `key` with its first letter written as a JSON `\u` escape: the raw bytes
/// never hold `AKIA`, the parsed string does.
fn escaped(key: &str) -> String {
    format!("\\u0041{}", &key[1..])
}

/// A raw JSON chat body around `content`, which is inserted unescaped.
fn raw_chat(content: &str) -> String {
    format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{content}"}}]}}"#)
}

fn fullwidth(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(c as u32 + 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

fn percent_all(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(bytes: &[u8], url: bool, pad: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// Plain prose, `len` bytes: no secret, no personal data, low entropy.
fn prose(len: usize) -> String {
    let words = "the quarterly planning notes cover staffing budgets travel and the \
                 roadmap for the next release of the billing service ";
    words.chars().cycle().take(len).collect()
}

/// A JSON object nested `depth` levels around `inner` (raw JSON).
fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

fn tool(name: &str, description: &str, properties: Value) -> Value {
    json!({
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": { "type": "object", "properties": properties },
        },
    })
}

/// A tool schema `depth` objects deep, every level a real property.
fn deep_schema(depth: usize) -> Value {
    let mut schema = json!({ "type": "string", "description": "the leaf value" });
    for level in (0..depth).rev() {
        schema = json!({
            "type": "object",
            "description": format!("level {level}"),
            "properties": { format!("field{level}"): schema },
        });
    }
    schema
}

// ---------------------------------------------------------------- corpus

#[derive(Default)]
struct Corpus {
    cases: Vec<Case>,
}

impl Corpus {
    /// The next case's key: `AKIA` + 16 of [A-Z0-9], 20 characters.
    fn next_key(&self) -> String {
        format!("AKIAEVASIONCASE{:05}", self.cases.len() + 1)
    }

    /// A case hiding a key: refused with one of `outcomes`.
    fn secret(
        &mut self,
        name: &'static str,
        outcomes: &'static [&'static str],
        finding: Finding,
        request: impl FnOnce(&str) -> Request,
    ) {
        let key = self.next_key();
        self.cases.push(Case {
            name,
            request: request(&key),
            key: Some(key),
            expect: Expect::Refused { outcomes, finding },
        });
    }

    /// A case breaking a rule other than data: refused with one of `outcomes`.
    fn refused(&mut self, name: &'static str, outcomes: &'static [&'static str], request: Request) {
        self.cases.push(Case {
            name,
            key: None,
            request,
            expect: Expect::Refused {
                outcomes,
                finding: no_finding(),
            },
        });
    }

    fn other(&mut self, name: &'static str, request: Request, expect: Expect) {
        self.cases.push(Case {
            name,
            key: None,
            request,
            expect,
        });
    }
}

pub fn corpus() -> Vec<Case> {
    let mut c = Corpus::default();
    baselines(&mut c);
    encodings(&mut c);
    places(&mut c);
    not_strict_json(&mut c);
    obfuscation(&mut c);
    multipart_parts(&mut c);
    other_rules(&mut c);
    controls(&mut c);
    c.cases
}

/// What today's agent already refuses: proof the setup itself works.
fn baselines(c: &mut Corpus) {
    c.secret("baseline: key in a message", DATA, at("body"), |k| {
        Request::post(CHAT, json_body(chat(say(k))))
    });
    c.refused(
        "baseline: denied model in the body",
        MODEL_REFUSED,
        Request::post(
            CHAT,
            json_body(
                json!({"model": "denied-model", "messages": [{"role": "user", "content": "hi"}]}),
            ),
        ),
    );
    c.refused(
        "baseline: GET /v1/files",
        PATH_BLOCKED,
        Request::get("/v1/files"),
    );
}

/// Content-Encoding: the body the upstream decompresses.
fn encodings(c: &mut Corpus) {
    for (name, label, algorithm) in [
        ("content-encoding: gzip", "gzip", "gzip"),
        ("content-encoding: deflate (zlib)", "deflate", "deflate"),
        ("content-encoding: zstd", "zstd", "zstd"),
        ("content-encoding: br", "br", "br"),
        (
            "content-encoding: deflate (raw, no zlib header)",
            "deflate",
            "deflate-raw",
        ),
        ("content-encoding: GZIP (upper case)", "GZIP", "gzip"),
        ("content-encoding: x-gzip", "x-gzip", "gzip"),
    ] {
        c.secret(name, DATA, aws(), |k| {
            Request::post(CHAT, compressed(algorithm, json_body(chat(say(k))))).encoding(label)
        });
    }
    c.secret("content-encoding: gzip, gzip (stacked)", DATA, aws(), |k| {
        let body = compressed("gzip", compressed("gzip", json_body(chat(say(k)))));
        Request::post(CHAT, body).encoding("gzip, gzip")
    });
    c.secret(
        "content-encoding: compress (unsupported)",
        UNREADABLE,
        aws(),
        |k| {
            Request::post(CHAT, compressed("compress", json_body(chat(say(k)))))
                .encoding("compress")
        },
    );
    c.refused(
        "decompression bomb: gzip of 200 MB of zeros",
        BOMB,
        Request::post(CHAT, compressed("gzip", json!({ "zeros": 200 << 20 }))).encoding("gzip"),
    );
}

/// Places other than a message's text.
fn places(c: &mut Corpus) {
    c.secret(
        "json object key: openai metadata",
        DATA,
        at("body-key"),
        |k| {
            let mut body = chat("summarise the notes");
            body["metadata"] = json!({ k: "x" });
            Request::post(CHAT, json_body(body))
        },
    );
    c.secret(
        "json object key: tool parameters.properties",
        DATA,
        at("body-key"),
        |k| {
            let mut body = chat("look it up");
            body["tools"] = json!([tool(
                "lookup",
                "Look a thing up.",
                json!({ k: {"type": "string"} })
            )]);
            Request::post(CHAT, json_body(body))
        },
    );
    c.secret(
        "json object key: anthropic tool_use.input",
        DATA,
        at("body-key"),
        |k| {
            let body = json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 64,
                "messages": [
                    {"role": "user", "content": "run the deploy tool"},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "deploy", "input": { k: "x" }},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"},
                    ]},
                ],
            });
            Request::post("/v1/messages", json_body(body)).header("anthropic-version", "2023-06-01")
        },
    );
    c.secret(
        "json object key: \\u-escaped, in metadata",
        DATA,
        at("body-key"),
        |k| {
            let raw = format!(
                r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"metadata":{{"{}":"x"}}}}"#,
                escaped(k)
            );
            Request::post(CHAT, text(raw))
        },
    );
    c.secret("url query string", DATA, at("query"), |k| {
        Request::post(format!("{CHAT}?note={k}"), json_body(chat("hi")))
    });
    c.secret(
        "url query string, percent-encoded",
        DATA,
        at("query"),
        |k| Request::post(format!("{CHAT}?note=%41{}", &k[1..]), json_body(chat("hi"))),
    );
    c.secret("request header x-note", DATA, at("header:"), |k| {
        Request::post(CHAT, json_body(chat("hi"))).header("x-note", k)
    });
    c.secret("message name field", DATA, aws(), |k| {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "name": k, "content": "hi"}],
        });
        Request::post(CHAT, json_body(body))
    });
    c.secret("duplicate json key: the second value", DATA, aws(), |k| {
        let raw = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hello","content":"{}"}}]}}"#,
            say(k)
        );
        Request::post(CHAT, text(raw))
    });
}

/// Bodies that are not strict UTF-8 JSON but that a lenient server reads;
/// the key is `\u`-escaped so that no byte-level scan of them finds it.
fn not_strict_json(c: &mut Corpus) {
    c.secret(
        "\\u0041KIA escape nested 80 levels deep",
        DATA_OR_UNREADABLE,
        aws(),
        |k| {
            let inner = format!(r#""deploy with {}""#, escaped(k));
            let raw = format!(
                r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"metadata":{}}}"#,
                nested(80, &inner)
            );
            Request::post(CHAT, text(raw))
        },
    );
    c.secret("utf-16 body (with BOM)", DATA_OR_UNREADABLE, aws(), |k| {
        Request::post(CHAT, charset("utf-16", json_body(chat(say(k)))))
    });
    c.secret("utf-32 body (with BOM)", DATA_OR_UNREADABLE, aws(), |k| {
        Request::post(CHAT, charset("utf-32", json_body(chat(say(k)))))
    });
    c.secret("utf-8 BOM, escaped key", DATA_OR_UNREADABLE, aws(), |k| {
        let body = concat(vec![raw_hex("efbbbf"), text(raw_chat(&say(&escaped(k))))]);
        Request::post(CHAT, body)
    });
    c.secret("NaN literal, escaped key", DATA_OR_UNREADABLE, aws(), |k| {
        let raw = format!(
            r#"{{"model":"gpt-4o-mini","temperature":NaN,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            say(&escaped(k))
        );
        Request::post(CHAT, text(raw))
    });
    c.secret(
        "one invalid UTF-8 byte, escaped key",
        DATA_OR_UNREADABLE,
        aws(),
        |k| {
            let body = concat(vec![
                text(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"caf"#),
                raw_hex("ff"),
                text(format!(
                    r#""}},{{"role":"user","content":"{}"}}]}}"#,
                    say(&escaped(k))
                )),
            ]);
            Request::post(CHAT, body)
        },
    );
    c.secret(
        "lone UTF-16 surrogate escape inside the key",
        DATA_OR_UNREADABLE,
        aws(),
        |k| {
            let hidden = format!("{}\\udfff{}", &k[..8], &k[8..]);
            Request::post(CHAT, text(raw_chat(&say(&hidden))))
        },
    );
}

/// The key split, disguised or encoded inside ordinary JSON.
fn obfuscation(c: &mut Corpus) {
    c.secret("split across two messages", DATA, at("joined"), |k| {
        let (a, b) = k.split_at(10);
        Request::post(
            CHAT,
            json_body(chat_messages(&[
                &format!("the key starts {a}"),
                &format!("{b} and that is all"),
            ])),
        )
    });
    c.secret("split across two content parts", DATA, at("joined"), |k| {
        let (a, b) = k.split_at(12);
        let content = json!([
            {"type": "text", "text": format!("use {a}")},
            {"type": "text", "text": format!("{b} to deploy")},
        ]);
        Request::post(CHAT, json_body(chat(content)))
    });
    c.secret("split across three messages", DATA, at("joined"), |k| {
        Request::post(
            CHAT,
            json_body(chat_messages(&[
                &format!("part one {}", &k[..7]),
                &k[7..14],
                &format!("{} end", &k[14..]),
            ])),
        )
    });
    for (name, mark) in [
        ("zero-width space inside the key", "\u{200B}"),
        ("soft hyphen inside the key", "\u{AD}"),
        ("word joiner inside the key", "\u{2060}"),
    ] {
        c.secret(name, DATA, aws(), |k| {
            let (a, b) = k.split_at(8);
            Request::post(CHAT, json_body(chat(say(&format!("{a}{mark}{b}")))))
        });
    }
    c.secret("glued to word characters: keyAKIA...", DATA, aws(), |k| {
        Request::post(CHAT, json_body(chat(format!("the key{k} works"))))
    });
    c.secret("glued on both sides: xAKIA...yz", DATA, aws(), |k| {
        Request::post(CHAT, json_body(chat(format!("token x{k}yz works"))))
    });
    c.secret("fullwidth letters", DATA, aws(), |k| {
        Request::post(CHAT, json_body(chat(say(&fullwidth(k)))))
    });
    c.secret("hex-encoded", DATA, encoded(), |k| {
        let blob = hex(format!("aws_access_key_id={k}").as_bytes());
        Request::post(CHAT, json_body(chat(format!("decode this hex: {blob}"))))
    });
    c.secret("percent-encoded", DATA, encoded(), |k| {
        Request::post(CHAT, json_body(chat(say(&percent_all(k)))))
    });
    c.secret(
        "base64 inside a token longer than 512 characters",
        DATA,
        encoded(),
        |k| {
            let plain = format!("{} key {k} {}", prose(300), prose(150));
            let blob = base64(plain.as_bytes(), false, true);
            assert!(blob.len() > 512, "the token must pass 512 characters");
            Request::post(CHAT, json_body(chat(format!("attachment: {blob}"))))
        },
    );
    c.secret("base64url without padding", DATA, encoded(), |k| {
        let mut raw = vec![0xfb, 0xef];
        raw.extend_from_slice(k.as_bytes());
        let blob = base64(&raw, true, false);
        Request::post(CHAT, json_body(chat(format!("blob {blob} end"))))
    });
    c.secret("double base64, over 512 characters", DATA, encoded(), |k| {
        let plain = format!("{} key {k}", prose(280));
        let inner = base64(plain.as_bytes(), false, true);
        let blob = base64(inner.as_bytes(), false, true);
        assert!(blob.len() > 512, "the token must pass 512 characters");
        Request::post(CHAT, json_body(chat(format!("attachment: {blob}"))))
    });
    c.secret("base64 wrapped at 76 columns", DATA, encoded(), |k| {
        let plain = format!("{} key {k} {}", prose(120), prose(60));
        let blob = base64(plain.as_bytes(), false, true);
        let lines: Vec<&str> = blob
            .as_bytes()
            .chunks(76)
            .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
            .collect();
        Request::post(
            CHAT,
            json_body(chat(format!("attachment:\r\n{}", lines.join("\r\n")))),
        )
    });
    c.secret("urlencoded form body, %41KIA...", DATA, aws(), |k| {
        let body = text(format!(
            "model=gpt-4o-mini&prompt=deploy+with+%41{}+tonight",
            &k[1..]
        ));
        Request::post("/v1/completions", body)
            .header("content-type", "application/x-www-form-urlencoded")
    });
}

/// Multipart uploads (not to /v1/files, which the path rule blocks).
fn multipart_parts(c: &mut Corpus) {
    c.secret(
        "multipart: gzip-compressed file part",
        DATA,
        at("part:"),
        |k| {
            let notes = text(format!("meeting notes: {}", say(k)));
            upload(
                "evasionBoundaryGzipPart",
                vec![
                    part("model", None, &[], text("whisper-1")),
                    part(
                        "file",
                        Some("notes.txt.gz"),
                        &[("Content-Type", "application/gzip")],
                        compressed("gzip", notes),
                    ),
                ],
            )
        },
    );
    c.secret(
        "multipart: zstd-compressed part, no header",
        DATA,
        at("part:"),
        |k| {
            upload(
                "evasionBoundaryZstdPart",
                vec![
                    part("model", None, &[], text("whisper-1")),
                    part(
                        "file",
                        Some("notes.bin"),
                        &[("Content-Type", "application/octet-stream")],
                        // Enough text that zstd entropy-codes its
                        // literals: the key is in no raw byte run.
                        compressed(
                            "zstd",
                            text(format!("{} {} {}", prose(200), say(k), prose(100))),
                        ),
                    ),
                ],
            )
        },
    );
    c.secret(
        "multipart: Content-Transfer-Encoding base64 part",
        DATA,
        encoded_at("part:"),
        |k| {
            upload(
                "evasionBoundaryBase64Part",
                vec![
                    part("model", None, &[], text("whisper-1")),
                    part(
                        "prompt",
                        None,
                        &[("Content-Transfer-Encoding", "base64")],
                        text(base64(k.as_bytes(), false, true)),
                    ),
                ],
            )
        },
    );
    c.secret("multipart: key as the file name", DATA, at("part:"), |k| {
        upload(
            "evasionBoundaryFileName",
            vec![
                part("model", None, &[], text("whisper-1")),
                part(
                    "file",
                    Some(&format!("{k}.txt")),
                    &[("Content-Type", "text/plain")],
                    text("just a recording"),
                ),
            ],
        )
    });
}

/// Path, model and size rules, evaded the way the upstream still honours.
fn other_rules(c: &mut Corpus) {
    c.refused(
        "gemini: denied model in the path, another in the body",
        MODEL,
        Request::post(
            "/v1beta/models/denied-model:generateContent",
            json_body(json!({
                "model": "gpt-4o",
                "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
            })),
        ),
    );
    let mut body = chat("use the tool");
    body["tools"] = json!([tool(
        "report",
        &prose(4096),
        json!({"q": {"type": "string"}})
    )]);
    c.refused(
        "max_prompt_bytes: 4 KB in a tool description",
        TOO_LARGE,
        Request::post(CHAT, json_body(body)),
    );
    for (name, path) in [
        ("path: //v1/files", "//v1/files"),
        ("path: /v1/./files", "/v1/./files"),
        ("path: /v1/%66iles", "/v1/%66iles"),
    ] {
        c.refused(name, PATH_BLOCKED, Request::get(path));
    }
}

/// Benign requests that must go through, and one redaction.
fn controls(c: &mut Corpus) {
    c.other(
        "control: clean gzip chat",
        Request::post(
            CHAT,
            compressed(
                "gzip",
                json_body(chat("benign gzip marker: summarise the meeting notes")),
            ),
        )
        .encoding("gzip"),
        Expect::Passes {
            marker: "benign gzip marker",
        },
    );
    c.other(
        "control: clean multipart upload",
        upload(
            "evasionBoundaryClean",
            vec![
                part("model", None, &[], text("whisper-1")),
                part(
                    "file",
                    Some("notes.txt"),
                    &[("Content-Type", "text/plain")],
                    text("benign multipart marker: the quarterly review is on Tuesday"),
                ),
            ],
        ),
        Expect::Passes {
            marker: "benign multipart marker",
        },
    );
    let mut body = chat("fill in the form");
    body["tools"] = json!([tool(
        "fill_form",
        "benign schema marker: fills a nested form",
        json!({ "form": deep_schema(12) }),
    )]);
    c.other(
        "control: clean deep-ish tool schema",
        Request::post(CHAT, json_body(body)),
        Expect::Passes {
            marker: "benign schema marker",
        },
    );
    c.other(
        "control: clean unicode chat (emoji ZWJ, fullwidth, accents)",
        Request::post(
            CHAT,
            json_body(chat(
                "benign unicode marker: café, naïve, 👩\u{200D}💻 and ｆｕｌｌｗｉｄｔｈ text",
            )),
        ),
        Expect::Passes {
            marker: "benign unicode marker",
        },
    );
    c.other(
        "pii: an email in a gzip body is redacted",
        Request::post(
            CHAT,
            compressed(
                "gzip",
                json_body(chat(
                    "please contact jane.roe@example.com about the invoice",
                )),
            ),
        )
        .encoding("gzip"),
        Expect::Redacted {
            class: "email",
            original: "jane.roe@example.com",
        },
    );
}
