//! Log lines carry plain values: a field captured with `?` (its Rust debug
//! form) prints `exe=Some("/usr/bin/curl")` to an operator and
//! `"exe":"Some(\"/usr/bin/curl\")"` to a journal query. This keeps any
//! such capture out of the agent's sources.

use std::path::Path;

/// The `tracing` macros.
const MACROS: [&str; 5] = ["trace!(", "debug!(", "info!(", "warn!(", "error!("];

/// Where a `tracing` field is captured with `?`: `name = ?value`, or the
/// shorthand `?value` after `(` or `, `, on the lines of a tracing macro
/// call (from its name to the `);` that ends it).
fn debug_captures(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_macro = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        in_macro |= MACROS.iter().any(|m| line.contains(m));
        if !in_macro {
            continue;
        }
        if code.ends_with(");") || code.ends_with(")") && code.starts_with(')') {
            in_macro = false;
        }
        // A field alone on its line, as rustfmt lays out long calls.
        let padded = format!(" {line}");
        let captured = ["= ?", "(?", ", ?", " ?"].iter().any(|prefix| {
            padded.match_indices(prefix).any(|(at, _)| {
                padded[at + prefix.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '&')
            })
        });
        if captured {
            found.push(format!("line {}: {}", n + 1, line.trim()));
        }
    }
    found
}

#[test]
fn no_log_field_is_captured_in_its_debug_form() {
    let mut problems = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("log_field_tests.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for found in debug_captures(&text) {
                    problems.push(format!("{}: {found}", path.display()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "log fields captured with `?` print Rust debug forms; use `%`, `.as_deref()`, or \
         `fields::list`:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_finds_both_spellings_and_skips_sql() {
    let text = "info!(exe = ?id.exe, \"x\");\ndebug!(\n    %host,\n    ?addrs,\n    \"y\"\n);\n\
                let re = r\"(?s)a.*b\";\nquery(\"WHERE a = ?1\");";
    assert_eq!(debug_captures(text).len(), 2, "{:?}", debug_captures(text));
}
