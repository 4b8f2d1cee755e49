//! Turns a process's argv into a single display string that is safe to ship
//! off the host: secrets are masked, and the length is capped.
//!
//! Masking is heuristic and deliberately errs towards over-masking: a hidden
//! harmless value costs little, a leaked API key costs a lot.

use std::borrow::Cow;

pub const DEFAULT_MAX_LEN: usize = 1024;

const MASK: &str = "***";
const ELLIPSIS: &str = "…";

/// Option/variable name fragments that mark the associated value as secret.
const SECRET_WORDS: &str = "key token secret password passwd pwd auth credential bearer cookie";

/// Joins argv (as read from /proc/PID/cmdline, NUL-separated, or from an exec
/// event) into one display string, masking secrets and capping the length.
pub fn mask_cmdline(args: &[&str], max_len: usize) -> String {
    let mut out = String::new();
    let mut prev = Prev::Plain;
    for arg in args {
        // Args past the cap are never shown, so skip the work; masking is
        // per-arg, so everything that is shown was still masked first.
        if out.len() > max_len {
            break;
        }
        let (masked, next) = mask_arg(arg, prev);
        prev = next;
        if !out.is_empty() {
            out.push(' ');
        }
        push_quoted(&mut out, &masked);
    }
    cap(out, max_len)
}

/// Splits a raw NUL-separated /proc cmdline buffer into args (lossy UTF-8),
/// dropping the trailing empty arg.
pub fn split_raw(raw: &[u8]) -> Vec<String> {
    // The kernel terminates every arg with NUL, so the final split piece is
    // an artefact rather than an empty argument.
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// What the previous arg implies about how to treat the current one.
#[derive(Clone, Copy, PartialEq)]
enum Prev {
    Plain,
    /// A secret-named option without `=`: this arg is its value.
    SecretOption,
    /// `-H`/`--header`: this arg is an HTTP header.
    Header,
}

fn mask_arg(arg: &str, prev: Prev) -> (String, Prev) {
    // A following long option means the secret-named flag was a boolean
    // (e.g. `--no-auth --port 80`); anything else is taken to be its value.
    if prev == Prev::SecretOption && !arg.starts_with("--") {
        return (MASK.to_owned(), Prev::Plain);
    }
    let (structured, next) = mask_structure(arg, prev == Prev::Header);
    (mask_tokens(&structured), next)
}

fn mask_structure(arg: &str, is_header: bool) -> (Cow<'_, str>, Prev) {
    let body = arg.trim_start_matches('-');
    let dashes = arg.len() - body.len();
    if dashes == 0 || dashes > 2 {
        return (mask_value(arg, is_header), Prev::Plain);
    }
    let prefix = &arg[..dashes];
    match body.split_once('=') {
        Some((name, value)) if is_name(name) => {
            if is_secret_name(name) {
                return (format!("{prefix}{name}={MASK}").into(), Prev::Plain);
            }
            let header = matches!(name, "H" | "header");
            let value = mask_value(value, header);
            (format!("{prefix}{name}={value}").into(), Prev::Plain)
        }
        None if is_name(body) => {
            let next = if is_secret_name(body) {
                Prev::SecretOption
            } else if matches!(body, "H" | "header") {
                Prev::Header
            } else {
                Prev::Plain
            };
            (Cow::Borrowed(arg), next)
        }
        // Covers the attached curl form `-HAuthorization: Bearer x`.
        _ => (mask_value(arg, true), Prev::Plain),
    }
}

/// Masks a positional value that is itself structured: an HTTP header or a
/// `NAME=VALUE` assignment (env vars, `--build-arg`, helm `--set`).
fn mask_value(s: &str, is_header: bool) -> Cow<'_, str> {
    if let Some((name, value)) = s.split_once(':') {
        let spaced = value.starts_with([' ', '\t']);
        // Outside a -H context only accept "Name: value" with a space, so
        // host:port pairs such as "keycloak:8080" stay readable.
        if (is_header || spaced) && is_header_name(name) && is_secret_name(name) {
            let sep = if spaced { " " } else { "" };
            return format!("{name}:{sep}{MASK}").into();
        }
    }
    if let Some((name, _)) = s.split_once('=')
        && is_name(name)
        && !name.starts_with('-')
        && is_secret_name(name)
    {
        return format!("{name}={MASK}").into();
    }
    Cow::Borrowed(s)
}

/// Option and variable names may contain '.', header names may not.
fn is_name(s: &str) -> bool {
    is_header_name(&s.replace('.', "_"))
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

fn is_secret_name(name: &str) -> bool {
    let norm = name.to_ascii_lowercase().replace('_', "-");
    SECRET_WORDS.split(' ').any(|w| norm.contains(w))
}

/// Masks well-known credential shapes wherever they appear, so secrets passed
/// positionally or embedded in larger strings are caught too.
fn mask_tokens(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if let Some((keep, end)) = token_at(b, i) {
            // `i` and `end` sit on ASCII bytes (or the end), so both are char
            // boundaries and the slices below cannot panic.
            out.push_str(&s[copied..i + keep]);
            out.push_str(MASK);
            i = end;
            copied = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// Provider credential prefixes, the punctuation their alphanumeric body may
/// also contain, and the minimum body length, which keeps short look-alikes
/// ("sk-test") readable. AWS id bodies also accept lowercase on purpose:
/// over-masking is cheaper than a miss.
const TOKEN_RULES: [(&[&str], &str, usize); 6] = [
    (&["sk-"], "_-", 16),
    (&["AKIA", "ASIA"], "", 16),
    (
        &["github_pat_", "ghp_", "gho_", "ghs_", "ghu_", "ghr_"],
        "_",
        16,
    ),
    (&["AIza"], "_-", 35),
    (&["hf_"], "", 20),
    (&["xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"], "-", 10),
];

/// If a secret starts at `i`, returns how many of its bytes to keep visible
/// (the recognisable prefix) and where it ends.
fn token_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let rest = &b[i..];
    if rest.starts_with(b"://") {
        return userinfo_password(b, i + 3);
    }
    // Requiring a non-alphanumeric boundary keeps words like "disk-…" or
    // "thf_…" from matching the "sk-"/"hf_" prefixes.
    if i > 0 && b[i - 1].is_ascii_alphanumeric() {
        return None;
    }
    for (prefixes, punct, min) in TOKEN_RULES {
        let body = |c: &&u8| c.is_ascii_alphanumeric() || punct.as_bytes().contains(c);
        for prefix in prefixes {
            if let Some(after) = rest.strip_prefix(prefix.as_bytes()) {
                let run = after.iter().take_while(body).count();
                if run >= min {
                    return Some((prefix.len(), i + prefix.len() + run));
                }
            }
        }
    }
    None
}

/// For `scheme://user:pass@host`, masks `pass`; `start` is just after "://".
fn userinfo_password(b: &[u8], start: usize) -> Option<(usize, usize)> {
    let authority_len = b[start..]
        .iter()
        .take_while(|c| !matches!(c, b'/' | b'?' | b'#') && !c.is_ascii_whitespace())
        .count();
    let authority = &b[start..start + authority_len];
    // The last '@' ends the userinfo: passwords may contain raw '@'.
    let at = authority.iter().rposition(|c| *c == b'@')?;
    let colon = authority[..at].iter().position(|c| *c == b':')?;
    Some((3 + colon + 1, start + at))
}

/// Single-quotes args that would otherwise be ambiguous when joined with
/// spaces. Mask markers are ignored for the decision so `--key=***` stays
/// unquoted; the display is for humans, not for pasting into a shell.
fn push_quoted(out: &mut String, arg: &str) {
    let probe = arg.replace(MASK, "");
    let special =
        |c: char| c.is_whitespace() || c.is_control() || "'\"`$&|;<>()[]{}*?!\\".contains(c);
    let needs = arg.is_empty() || probe.chars().any(special) || probe.starts_with(['~', '#']);
    if !needs {
        out.push_str(arg);
        return;
    }
    out.push('\'');
    out.push_str(&arg.replace('\'', r"'\''"));
    out.push('\'');
}

fn cap(mut s: String, max_len: usize) -> String {
    if s.len() > max_len {
        // A budget too small for the ellipsis still gets a bare cut, so the
        // length promise holds for every max_len.
        let room = max_len.checked_sub(ELLIPSIS.len());
        s.truncate(s.floor_char_boundary(room.unwrap_or(max_len)));
        if room.is_some() {
            s.push_str(ELLIPSIS);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0";
    const ANTHROPIC: &str = "sk-ant-api03-Xy7_Kq2mN9pLr4sT8vW1zA3bC5dE6fG-hJ0kL";

    /// Each case is "arg|arg|... => expected display", which keeps the tables
    /// one case per line.
    fn check(cases: &[&str]) {
        for case in cases {
            let (args, want) = case.split_once(" => ").unwrap();
            let args: Vec<&str> = args.split('|').collect();
            assert_eq!(mask_cmdline(&args, DEFAULT_MAX_LEN), want, "{args:?}");
        }
    }

    #[test]
    fn plain_args_unchanged() {
        check(&[
            "python3|-m|http.server|8080 => python3 -m http.server 8080",
            "app|--port=8080|HOME=/root => app --port=8080 HOME=/root",
        ]);
        assert_eq!(mask_cmdline(&[], DEFAULT_MAX_LEN), "");
    }

    #[test]
    fn secret_options() {
        check(&[
            "app|--api-key=sk-abc => app --api-key=***",
            "app|--API_KEY=x|-token=y => app --API_KEY=*** -token=***",
            "app|--db-password=|--client_secret=a b => app --db-password=*** --client_secret=***",
            "app|--api-key|sk-abc|x => app --api-key *** x",
            "app|--Auth-Token|t|-pwd|p => app --Auth-Token *** -pwd ***",
            "curl|--cookie|c|--oauth2-bearer|b => curl --cookie *** --oauth2-bearer ***",
            "app|--passwd|-|--credentials|c => app --passwd *** --credentials ***",
            // A following long option means the flag had no value.
            "app|--no-auth|--port|80 => app --no-auth --port 80",
            // A lone secret option at the end has nothing to mask.
            "app|--api-key => app --api-key",
        ]);
    }

    #[test]
    fn curl_headers() {
        check(&[
            "curl|-H|Authorization: Bearer xyz => curl -H 'Authorization: ***'",
            "curl|-H|x-api-key:abc => curl -H x-api-key:***",
            "curl|--header|Cookie: s=1 => curl --header 'Cookie: ***'",
            "curl|--header=Proxy-Authorization: Basic Zm9v => curl '--header=Proxy-Authorization: ***'",
            "curl|-HX-Auth-Token: t => curl '-HX-Auth-Token: ***'",
            "curl|-H|Accept: text/html => curl -H 'Accept: text/html'",
            // Without a -H context, host:port must not read as a header.
            "kc|keycloak:8080 => kc keycloak:8080",
        ]);
    }

    #[test]
    fn env_style_assignments() {
        check(&[
            "env|OPENAI_API_KEY=abc|python => env OPENAI_API_KEY=*** python",
            "docker|-e|GH_TOKEN=x => docker -e GH_TOKEN=***",
            "docker|--env=AWS_SECRET_ACCESS_KEY=y => docker --env=AWS_SECRET_ACCESS_KEY=***",
            "helm|--set|auth.password=p => helm --set auth.password=***",
        ]);
    }

    #[test]
    fn provider_keys_anywhere() {
        check(&[
            &format!("x|{OPENAI}|{ANTHROPIC} => x sk-*** sk-***"),
            &format!("x|--prompt=use key:{ANTHROPIC} => x '--prompt=use key:sk-***'"),
            "x|AKIAIOSFODNN7EXAMPLE|ASIAY34FZKBOKMUTVV7A, => x AKIA*** ASIA***,",
            "x|ghp_16C7e42F292c6912E7710c838347Ae178B4a => x ghp_***",
            "x|gho_16C7e42F292c6912E7710c8|ghs_16C7e42F292c6912E7710c8 => x gho_*** ghs_***",
            "x|github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz0123 => x github_pat_***",
            "x|xoxb-123456789012-abcdefABCDEF|xoxp-1234-5678-abcdef => x xoxb-*** xoxp-***",
            "x|AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q => x AIza***",
            "x|hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ => x hf_***",
        ]);
    }

    #[test]
    fn token_lookalikes_untouched() {
        check(&[
            "disk-0123456789abcdefghij|sk-short => disk-0123456789abcdefghij sk-short",
            "AKIA-not|hf_short|ghp_x|AIzaShort => AKIA-not hf_short ghp_x AIzaShort",
            "thf_aBcDeFgHiJkLmNoPqRsTuVwXyZ => thf_aBcDeFgHiJkLmNoPqRsTuVwXyZ",
        ]);
    }

    #[test]
    fn url_userinfo() {
        check(&[
            "git|clone|https://u:s3cr3t@github.com/o/r => git clone https://u:***@github.com/o/r",
            "x|postgres://app:p@ss@db:5432/x => x postgres://app:***@db:5432/x",
            "x|ssh://git@host/repo|https://h:443/a@b => x ssh://git@host/repo https://h:443/a@b",
        ]);
    }

    #[test]
    fn quoting() {
        check(&[
            "sh|-c|echo hi; ls => sh -c 'echo hi; ls'",
            r"echo|it's => echo 'it'\''s'",
            "a||b => a '' b",
            "ls|*.txt|~|$HOME => ls '*.txt' '~' '$HOME'",
            "a|x\ty|\u{3000} => a 'x\ty' '\u{3000}'",
            "cat|日本語.txt|a=b,c:d@e%f+g => cat 日本語.txt a=b,c:d@e%f+g",
        ]);
    }

    #[test]
    fn cap_adds_ellipsis_within_budget() {
        assert_eq!(mask_cmdline(&["abc", "def"], 7), "abc def");
        assert_eq!(mask_cmdline(&["abcdef", "ghij"], 8), "abcde…");
        let long: Vec<String> = (0..1000).map(|i| format!("arg{i}")).collect();
        let out = mask_cmdline(&long.iter().map(String::as_str).collect::<Vec<_>>(), 1024);
        assert!(out.len() <= 1024 && out.ends_with(ELLIPSIS));
        // Budgets too small for the ellipsis still respect the cap.
        assert_eq!(mask_cmdline(&["abcdef"], 0), "");
        assert_eq!(mask_cmdline(&["abcdef"], 2), "ab");
        assert_eq!(mask_cmdline(&["abcdef"], 3), "…");
    }

    #[test]
    fn cap_on_multibyte_boundary() {
        // 6 bytes leave 3 before the ellipsis, which would split the 2nd "é".
        assert_eq!(mask_cmdline(&["éééé"], 6), "é…");
        for max in 0..40 {
            let out = mask_cmdline(&["日本語", "🦀🦀", "ééé"], max);
            assert!(out.len() <= max, "{max}: {out}");
        }
    }

    #[test]
    fn masking_happens_before_cap() {
        assert_eq!(mask_cmdline(&["run", OPENAI], 12), "run sk-***");
        for max in 0..80 {
            let out = mask_cmdline(&["run", "--api-key", ANTHROPIC, OPENAI], max);
            assert!(
                !out.contains("proj") && !out.contains("api03"),
                "{max}: {out}"
            );
            assert!(out.len() <= max);
        }
    }

    #[test]
    fn split_raw_variants() {
        let nginx = split_raw(b"nginx\0-g\0daemon off;\0");
        assert_eq!(nginx, ["nginx", "-g", "daemon off;"]);
        assert_eq!(split_raw(b"a\0b"), ["a", "b"]);
        assert_eq!(split_raw(b"a\0\0"), ["a", ""]);
        assert!(split_raw(b"").is_empty());
        assert!(split_raw(b"\0").is_empty());
        assert_eq!(split_raw(b"\xff\xfeok\0"), ["\u{FFFD}\u{FFFD}ok"]);
    }

    #[test]
    fn never_panics_on_odd_input() {
        // The leading space yields the empty arg.
        let odd = " - -- --- = --= -=x : :// ://@ x://a:@ é --é=é é=é --api-key=é sk- sk-é AKIA \
                   xoxb- hf_ \0 \u{FFFD} 🦀://🦀:🦀@🦀 -H Authorization: a:b:c ' *** --token";
        let odd: Vec<&str> = odd.split(' ').collect();
        for &a in &odd {
            for &b in &odd {
                for max in [0, 1, 3, 5, 16, 1024] {
                    let out = mask_cmdline(&[a, b, "--token"], max);
                    assert!(out.len() <= max);
                }
            }
        }
        let _ = split_raw(&[0xff, 0, 0xc3, 0, 0, 0xe2, 0x82]);
    }
}
