//! The built-in classes: their names, categories, patterns and checks.
//!
//! Patterns use only ASCII classes and ASCII word boundaries (`(?-u:\b)`):
//! a Unicode `\b` or `\d` makes `regex` leave its lazy DFA for a much slower
//! engine as soon as the text holds a non-ASCII byte, and prompts often do.
//!
//! Keys with a distinctive prefix (`AKIA`, `ghp_`, `glpat-`, `xoxb-`,
//! `sk-ant-`, `AIza`, `eyJ`) have no word boundary in their patterns, before
//! or (fixed-length ones) after: `keyAKIA…` or a key with letters glued on
//! is still the key to whoever reads it. Their checks
//! ([`validate::glue`]) then ask for more evidence when a key is glued to
//! word characters, and refuse a "key" inside a long token, where a
//! four-letter prefix turns up by chance (base64 images, hashes).
//!
//! Their gates keep the boundary before the prefix, though. A prefix that
//! may start at any byte keeps partial matches alive all through a long
//! token, and with the other gates' counters the first pass's lazy DFA
//! outgrows its cache: six times slower on a 4 MiB base64 image. Keys
//! glued on the left are found through [`window_gates`] instead.
//!
//! Every pattern except `private-key`'s is single-line in a strong sense:
//! none can match any of the bytes in [`DELIMITERS`], nor `. ` (see
//! [`ends_window`]). `scan` relies on that to confine the work behind each
//! first-pass hit to a window.

use super::{
    Category, numbers,
    validate::{self, Span},
};

/// Validates a regex match at `start..end` of the full text and pushes the
/// spans (possibly narrowed, possibly several) that are real findings.
pub(super) type Check = fn(&[u8], usize, usize, &mut Vec<Span>);

pub(super) struct Builtin {
    pub name: &'static str,
    pub category: Category,
    /// Finds candidate spans, which `check` then validates.
    pub pattern: &'static str,
    /// What the first pass looks for, when not `pattern` itself. A gate must
    /// match wherever a valid finding starts (or one character earlier, when
    /// it checks what precedes the finding), and never hold a delimiter
    /// except as that leading character. It must be bounded in length: the
    /// first pass is one leftmost-first alternation, and an alternative
    /// that can run on (`x+@`) would make every search look ahead to the end
    /// of the text, quadratic over many hits. And it should match once per
    /// run of similar bytes, not at every byte of a long base64 or digit run:
    /// `RegexSet` stops at every match position it finds.
    pub gate: Option<&'static str>,
    /// Matches can span lines, so `pattern` runs over the whole text once
    /// the gate fires anywhere.
    pub whole_text: bool,
    /// What a finding starts with, when it may be glued to a word on its
    /// left (the gate then does not see it).
    pub prefixes: &'static [&'static str],
    pub check: Check,
}

/// `high-entropy` is the catch-all: it only reports tokens no other class
/// claims, so it is resolved separately.
pub(super) const HIGH_ENTROPY: usize = 10;

/// The phone pattern, shared by the finder and its gate.
macro_rules! phone {
    () => {
        concat!(
            r"\+[0-9](?:[ .-]?[0-9]|[ .-]?\([0-9]{1,4}\)){7,18}",
            r"|(?:1[ .-]?)?(?:\([0-9]{3}\) ?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}",
            r"|\(?0[0-9]{1,4}\)?(?:[ .-][0-9]{3,4}[ .-]?[0-9]{3,4}|[0-9]{3,4}[ .-][0-9]{3,4})",
            r"|0[1-9](?:[ .][0-9]{2}){4}",
        )
    };
}

pub(super) static BUILTINS: [Builtin; 16] = [
    Builtin {
        name: "aws-access-key",
        category: Category::Secret,
        pattern: r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}",
        gate: Some(r"(?-u:\b)(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"),
        whole_text: false,
        prefixes: &[
            "AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA",
        ],
        check: validate::aws_key,
    },
    Builtin {
        name: "aws-secret-key",
        category: Category::Secret,
        // A bare 40-character base64 string is far too common (hashes, IDs)
        // to flag, so the key must follow its name within 20 bytes of
        // assignment punctuation: `aws_secret_access_key = "…"`,
        // `"SecretAccessKey": "…"`, `AWS_SECRET_ACCESS_KEY=…`.
        pattern: r#"(?i-u:aws[_ .-]?secret(?:[_ .-]?access)?(?:[_ .-]?key)?|secret[_ .-]?access[_ .-]?key)[\t "'`:=>(),\\]{1,20}[A-Za-z0-9/+]{40}"#,
        gate: None,
        whole_text: false,
        prefixes: &[],
        check: validate::aws_secret,
    },
    Builtin {
        name: "github-token",
        category: Category::Secret,
        pattern: r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}",
        gate: Some(r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})"),
        whole_text: false,
        prefixes: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        check: validate::prefixed,
    },
    Builtin {
        name: "gitlab-token",
        category: Category::Secret,
        pattern: r"glpat-[A-Za-z0-9_-]{20,}",
        gate: Some(r"(?-u:\b)glpat-[A-Za-z0-9_-]{20}"),
        whole_text: false,
        prefixes: &["glpat-"],
        check: validate::prefixed,
    },
    Builtin {
        name: "slack-token",
        category: Category::Secret,
        pattern: r"xox[abpors]-[A-Za-z0-9-]{10,}",
        gate: Some(r"(?-u:\b)xox[abpors]-[A-Za-z0-9-]{10}"),
        whole_text: false,
        prefixes: &["xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxr-", "xoxs-"],
        check: validate::slack,
    },
    Builtin {
        name: "openai-key",
        category: Category::Secret,
        // `sk-` also ends words (`task-`, `risk-`): the check, not a word
        // boundary, decides what a glued `sk-` must look like.
        pattern: r"sk-[A-Za-z0-9_-]{20,}",
        gate: Some(r"(?-u:\b)sk-[A-Za-z0-9_-]{20}"),
        whole_text: false,
        prefixes: &["sk-"],
        check: validate::openai,
    },
    Builtin {
        name: "anthropic-key",
        category: Category::Secret,
        pattern: r"sk-ant-[A-Za-z0-9_-]{20,}",
        gate: Some(r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{20}"),
        whole_text: false,
        prefixes: &["sk-ant-"],
        check: validate::prefixed,
    },
    Builtin {
        name: "google-api-key",
        category: Category::Secret,
        pattern: r"AIza[0-9A-Za-z_-]{35}",
        gate: Some(r"(?-u:\b)AIza[0-9A-Za-z_-]{35}"),
        whole_text: false,
        prefixes: &["AIza"],
        check: validate::google,
    },
    Builtin {
        name: "private-key",
        category: Category::Secret,
        // BEGIN, then body lines (base64, `Proc-Type: …` headers, blank),
        // then END. Lines are separated by a newline or, when a JSON body is
        // scanned as text, a literal `\n`. A body line can never be a BEGIN
        // line, so each BEGIN scans only its own body: no quadratic blow-up
        // on a text that repeats BEGIN without END. Without an END, the
        // BEGIN line plus the base64 lines right after it: a truncated key
        // still leaks.
        pattern: concat!(
            "-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----",
            r"(?:(?:(?:\r?\n|\\r\\n|\\n)[ \t]*(?:[A-Za-z0-9+/=]+|[A-Za-z][A-Za-z0-9-]*: [^\r\n\\]*)?)*",
            r"(?:\r?\n|\\r\\n|\\n)[ \t]*-----END (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----",
            r"|(?:(?:\r?\n|\\r\\n|\\n)[ \t]*[A-Za-z0-9+/=]{16,})*)",
        ),
        gate: Some(PEM_GATE),
        whole_text: true,
        prefixes: &[],
        check: validate::accept,
    },
    Builtin {
        name: "jwt",
        category: Category::Secret,
        // Three segments (JWS) or five (JWE); the signature may be empty for
        // `alg: none`, which still carries the claims.
        pattern: r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?",
        gate: Some(r"(?-u:\b)eyJ[A-Za-z0-9_-]{10}"),
        whole_text: false,
        prefixes: &["eyJ"],
        check: validate::jwt,
    },
    Builtin {
        name: "high-entropy",
        category: Category::Secret,
        pattern: r"[A-Za-z0-9+/=_-]{32,}",
        gate: Some(concat!("(?:^|[^A-Za-z0-9+/=_-])", r"[A-Za-z0-9+/=_-]{32}")),
        whole_text: false,
        prefixes: &[],
        check: validate::high_entropy,
    },
    Builtin {
        name: "email",
        category: Category::Pii,
        pattern: r"[A-Za-z0-9_.%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,63}",
        gate: Some(r"(?:^|[^A-Za-z0-9_.%+-])[A-Za-z0-9_.%+-]{1,64}@[A-Za-z0-9]"),
        whole_text: false,
        prefixes: &[],
        check: validate::email,
    },
    Builtin {
        name: "us-ssn",
        category: Category::Pii,
        pattern: r"[0-9]{3}-[0-9]{2}-[0-9]{4}",
        gate: Some(r"(?:^|[^A-Za-z0-9_])[0-9]{3}-[0-9]{2}-[0-9]{4}"),
        whole_text: false,
        prefixes: &[],
        check: validate::us_ssn,
    },
    Builtin {
        name: "credit-card",
        category: Category::Pii,
        pattern: r"[0-9](?:[ -]?[0-9]){12,}",
        gate: Some(r"(?:^|[^0-9])[0-9](?:[ -]?[0-9]){12}"),
        whole_text: false,
        prefixes: &[],
        check: numbers::credit_card,
    },
    Builtin {
        name: "iban",
        category: Category::Pii,
        pattern: r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?",
        gate: Some(r"(?:^|[^A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2}"),
        whole_text: false,
        prefixes: &[],
        check: numbers::iban,
    },
    Builtin {
        name: "phone",
        category: Category::Pii,
        // International: `+`, then digits with single separators and
        // optional parenthesised area codes. North American: 3-3-4 with a
        // separator before the last four, so a bare 10-digit number (an ID,
        // a timestamp) does not match. National trunk-`0` formats (UK, DE
        // `020 7946 0958`, `030 1234 5678`; FR `01 23 45 67 89`) need a
        // separator for the same reason and 3+-digit groups so that dates
        // (`2024-03-15` holds `024-03-15`) do not even reach the check.
        pattern: phone!(),
        gate: Some(concat!(r"(?:^|[^A-Za-z0-9_])(?:", phone!(), ")")),
        whole_text: false,
        prefixes: &[],
        check: validate::phone,
    },
];

const PEM_GATE: &str = "-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----";

/// Gates that mark a window for more than its classes, in the window set
/// after the classes' gates:
///
/// - [`RUN_GATE`]: 16 base64 characters (hex digits are among them) with
///   an upper-case letter or a digit among them. All but 1 in 10^6 base64
///   or hex runs have one; lower-case paths and slugs
///   (`com/guide/getting-started`) do not. Its windows are searched for
///   encoded runs of 24+ characters (`encoded.rs`; 18 bytes' worth, a
///   little under the 27 characters of a 20-byte AWS key id in base64), and
///   for keys glued to a word on their left: a glued `AKIA…`, `eyJ…` or
///   `ghp_…` makes a run of 16 or more with an upper-case letter in its
///   first 16, or one of 32 or more, which `high-entropy`'s gate marks.
/// - [`PERCENT_GATE`]: percent escapes, up to 16 in one hit so that a fully
///   escaped text is one hit per 48 bytes, not one per 3.
/// - [`GLUE_GATE`]: the prefixes ending in `-`, which a word may end in
///   and a run need not hold an upper-case letter after (`keyglpat-…`,
///   `xoxb-`, `sk-`). Short and without a counter, it costs the first pass
///   next to nothing even though it starts inside words.
pub(super) fn window_gates() -> [String; 3] {
    let with_upper_or_digit: Vec<String> = (0..16)
        .map(|k| format!("[a-z+/=_-]{{{k}}}[A-Z0-9][A-Za-z0-9+/=_-]{{{}}}", 15 - k))
        .collect();
    [
        format!(
            "(?:^|[^A-Za-z0-9+/=_-])(?:{})",
            with_upper_or_digit.join("|")
        ),
        "(?:%[0-9A-Fa-f]{2}){1,16}".to_owned(),
        "[A-Za-z0-9_](?:glpat|xox[abpors]|sk)-".to_owned(),
    ]
}

/// Indexes, in the window set, of the gates of [`window_gates`].
pub(super) const RUN_GATE: usize = BUILTINS.len();
pub(super) const PERCENT_GATE: usize = BUILTINS.len() + 1;
pub(super) const GLUE_GATE: usize = BUILTINS.len() + 2;

/// Bytes no single-line pattern above can match, so a window that ends
/// right after one never cuts a finding in two.
const DELIMITERS: &[u8] = b"\n\r;!?{}[]<|*#&~^$";

static IS_DELIMITER: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < DELIMITERS.len() {
        table[DELIMITERS[i] as usize] = true;
        i += 1;
    }
    table
};

pub(super) fn is_delimiter(b: u8) -> bool {
    IS_DELIMITER[usize::from(b)]
}

/// Whether a window may end right after `bytes[i]`: a delimiter, or the
/// `.` of `. ` — no single-line pattern holds a period followed by a
/// space (separators are single characters; an e-mail or token has no
/// space; a JWT may end in `.`, which stays in the window). Prose has one
/// every sentence, delimiters often only every paragraph, and the work
/// behind each first-pass hit is its window's length.
pub(super) fn ends_window(bytes: &[u8], i: usize) -> bool {
    is_delimiter(bytes[i]) || (bytes[i] == b'.' && bytes.get(i + 1) == Some(&b' '))
}

/// The end of the window that holds `bytes[from..]`'s first byte: just
/// after the next byte a window may end after, or the end of `bytes`.
pub(super) fn window_end(bytes: &[u8], from: usize) -> usize {
    (from..bytes.len())
        .find(|&i| ends_window(bytes, i))
        .map_or(bytes.len(), |i| i + 1)
}

/// The start of the window that holds `bytes[..to]`'s last byte, no
/// earlier than `floor`.
pub(super) fn window_start(bytes: &[u8], floor: usize, to: usize) -> usize {
    (floor..to)
        .rev()
        .find(|&i| ends_window(bytes, i))
        .map_or(floor, |i| i + 1)
}
