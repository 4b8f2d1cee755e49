//! Deterministic prompt-like text for benchmarking the classifier, shared by
//! the tests and `cargo xtask bench classify`.

/// Prose with code, numbers, dates, URLs and some non-ASCII, which exercise
/// the patterns' near misses, plus one real finding about every 2 KiB.
const WORDS: &[&str] = &[
    "the",
    "model",
    "should",
    "answer",
    "the",
    "question",
    "about",
    "our",
    "customer",
    "orders",
    "and",
    "please",
    "summarize",
    "the",
    "following",
    "report",
    "revenue",
    "grew",
    "while",
    "costs",
    "were",
    "flat",
    "we",
    "need",
    "a",
    "function",
    "that",
    "returns",
    "the",
    "value",
    "with",
    "error",
    "handling",
    "for",
    "each",
    "request",
    "in",
    "this",
    "service",
    "it",
    "is",
    "important",
    "to",
    "keep",
    "latency",
    "low",
    "when",
    "users",
    "upload",
    "files",
    "to",
    "storage",
    "can",
    "you",
    "explain",
    "why",
    "test",
    "fails",
    "on",
    "CI",
    "but",
    "passes",
    "locally",
    "I",
    "think",
    "cache",
    "is",
    "stale",
    "rewrite",
    "paragraph",
    "in",
    "a",
    "friendly",
    "tone",
    "translate",
    "into",
    "French",
    "café",
    "naïve",
    "résumé",
    "—",
    "“quoted”",
    "team",
    "meeting",
    "notes",
    "action",
    "items",
    "deadline",
    "next",
    "week",
    "database",
    "migration",
    "schema",
    "index",
    "query",
    "plan",
    "Kubernetes",
    "deployment",
    "config",
    "environment",
    "variable",
    "timeout",
    "retry",
    "backoff",
    "metrics",
];

const FILLERS: &[&str] = &[
    "In 2023 revenue grew 14% to $4.2 million.",
    "The meeting is on 2024-03-15 at 10:30.",
    "Upgrade from version 3.2.1 to 3.4.0 first.",
    "See https://docs.example.com/guide/getting-started#install for details.",
    "```\nlet total = items.iter().map(|i| i.price * 2).sum::<u64>();\n```",
    "Order #48213 shipped with 12 items, 3 of them backordered.",
    "Use the /api/v1/users endpoint with a page size of 50.",
    "The build took 7m 32s on 2 cores with 24 GiB of memory.",
];

const FINDINGS: &[&str] = &[
    "You can reach me at jane.doe@example.com if anything is unclear.",
    "Call me on +1 (415) 555-0132 after lunch.",
    "The card on file is 4111 1111 1111 1111, exp 12/27.",
    "Here is the key AKIAIOSFODNN7EXAMPLE for the staging bucket.",
    "Wire it to DE89 3704 0044 0532 0130 00 by Friday.",
    "My token is ghp_R4nd0mT0k3nV4lu3F0rB3nchm4rk1ngXy12Z if needed.",
    "Her SSN is 123-45-6789 according to the form.",
    "The session is eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U here.",
];

/// About `size` bytes (never more) of prompt-like text; the same every call.
pub fn bench_text(size: usize) -> String {
    let mut out = String::with_capacity(size + 256);
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut next_finding = 512;
    let mut finding = 0;
    let mut sentence_start = true;
    while out.len() < size {
        let r = next();
        if out.len() >= next_finding {
            out.push_str(FINDINGS[finding % FINDINGS.len()]);
            out.push(' ');
            finding += 1;
            next_finding += 2048;
            continue;
        }
        if r % 40 == 0 {
            out.push_str(FILLERS[(r >> 8) as usize % FILLERS.len()]);
            out.push(' ');
            continue;
        }
        let word = WORDS[(r >> 16) as usize % WORDS.len()];
        if sentence_start {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push_str(word);
        }
        sentence_start = r % 12 == 1;
        out.push_str(match r % 97 {
            0 => ".\n\n",
            _ if sentence_start => ". ",
            3..=6 => ", ",
            _ => " ",
        });
    }
    let mut cut = size.min(out.len());
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
}

/// An OpenAI-style chat request whose user message is `bench_text` sized so
/// that the whole body is about `size` bytes.
pub fn bench_json(size: usize) -> Vec<u8> {
    let system = "You are a helpful assistant. Answer concisely.";
    let text = bench_text(size.saturating_sub(200));
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": text},
        ],
        "temperature": 0.2,
        "stream": true,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}
