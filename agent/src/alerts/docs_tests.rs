//! What the README says about the alerts is what the agent raises: the
//! table under "### Alerts" lists every type, and no other.

use std::{collections::BTreeSet, path::Path};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// Every alert type the agent raises. Most are the first argument of an
/// `Alert::new` (checked below); these two reach it through a variable
/// (`bypass::connect_alert(kind, …)`).
const THROUGH_A_VARIABLE: &[&str] = &["unknown-address", "proxy-connect"];

/// The types in the README's alert table (its first column).
fn documented() -> BTreeSet<String> {
    let section = README
        .split("\n### Alerts\n")
        .nth(1)
        .expect("README has an `### Alerts` section");
    section
        .lines()
        .skip_while(|l| !l.starts_with("| type |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cell = l.split('|').nth(1).unwrap().trim();
            cell.trim_matches('`').to_string()
        })
        .collect()
}

/// Spelled in two so that this file's own text is not a call.
const CALL: &str = concat!("Alert", "::new(");

/// The string literals given as the kind to `Alert::new` anywhere in the
/// agent's sources, tests' samples included (they must be real types too).
fn raised() -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, call) in text.match_indices(CALL) {
                let rest = text[at + call.len()..].trim_start();
                if let Some(literal) = rest.strip_prefix('"') {
                    let kind = &literal[..literal.find('"').unwrap()];
                    kinds.insert(kind.to_string());
                }
            }
        }
    }
    kinds.extend(THROUGH_A_VARIABLE.iter().map(|k| k.to_string()));
    kinds
}

#[test]
fn the_readme_alert_table_lists_exactly_the_types_raised() {
    let documented = documented();
    let raised = raised();
    assert!(raised.len() >= 10, "the scan found too few: {raised:?}");
    let undocumented: Vec<_> = raised.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&raised).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "raised but not in the README's alert table: {undocumented:?}; \
         in the table but never raised: {unknown:?}"
    );
}
