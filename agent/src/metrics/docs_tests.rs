//! What the documentation says about the metrics is what the agent
//! exports: the Grafana dashboard (packaging/grafana/modelgate.json) asks
//! only for metrics the agent exports and applies `rate()` only to
//! counters; the README's table lists every family with its type.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Metrics, http::Format};

const DASHBOARD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/grafana/modelgate.json"
));

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// Functions that only make sense on a counter.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "resets"];

/// PromQL's aggregation operators: a function whose `(` may come after a
/// `by (…)` or `without (…)` clause.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary operators and modifiers spelled as words.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Every family the agent exports, with its type, from the registry in
/// Prometheus text (where a counter's family is its `_total`).
fn families() -> BTreeMap<String, String> {
    let text = Metrics::new()
        .with_a_series_in_every_family()
        .render(Format::Text);
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// Every sample name the agent exports, with its family's type.
fn exported() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for (name, kind) in families() {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"), kind.to_string());
            }
        } else {
            names.insert(name, kind);
        }
    }
    names
}

/// The index just past the bracket closing the one at `start`, stepping
/// over quoted strings.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i) - 1,
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced `{open}` in {}",
        chars.iter().collect::<String>()
    )
}

/// The index just past the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            c if c == quote => return i + 1,
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unterminated string in {}",
        chars.iter().collect::<String>()
    )
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects, each with the innermost
/// function it is an argument of.
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    // One entry per open parenthesis: the function it calls, if any.
    let mut calls: Vec<Option<String>> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            // Label matchers and range or subquery durations.
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '(' => {
                calls.push(pending.take());
                i += 1;
            }
            ')' => {
                calls.pop();
                i += 1;
            }
            // Grafana variables ($instance, $__rate_interval) and numbers
            // (0.95, 1e3, 5m after offset).
            '$' => {
                i += 1;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let opens = chars.get(next) == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if opens {
                        i = skip_group(&chars, next, '(', ')');
                    }
                } else if AGGREGATIONS.contains(&lower.as_str()) || opens {
                    pending = Some(word);
                } else if !KEYWORDS.contains(&lower.as_str()) {
                    let inside = calls.iter().rev().find_map(Clone::clone);
                    found.push((word, inside));
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// Every PromQL expression in the dashboard: the panels' targets and the
/// query variables (`label_values(selector, label)`: the selector).
fn queries(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["definition"]
            .as_str()
            .expect("a query's definition");
        match query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            Some(args) => {
                if let Some((selector, _label)) = args.rsplit_once(',') {
                    out.push(selector.to_string());
                }
            }
            None => out.push(query.to_string()),
        }
    }
    out
}

#[test]
fn the_lexer_finds_metric_names_and_their_functions() {
    let found = selectors(
        r#"histogram_quantile(0.95, sum by (le, provider) (rate(a_bucket{x=~"$x",y="b(c"}[$__rate_interval]))) / on(instance) group_left max(b) and c offset 5m"#,
    );
    assert_eq!(
        found,
        vec![
            ("a_bucket".to_string(), Some("rate".to_string())),
            ("b".to_string(), Some("max".to_string())),
            ("c".to_string(), None),
        ]
    );
}

#[test]
fn every_dashboard_query_names_an_exported_metric_and_rates_only_counters() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("modelgate.json is JSON");
    let exported = exported();
    let queries = queries(&dashboard);
    assert!(queries.len() > 20, "the dashboard's queries: {queries:?}");
    let mut problems = Vec::new();
    for expr in &queries {
        let found = selectors(expr);
        if found.is_empty() {
            problems.push(format!("no metric found in `{expr}`"));
        }
        for (name, function) in found {
            let Some(kind) = exported.get(&name) else {
                problems.push(format!("`{name}` is not exported, in `{expr}`"));
                continue;
            };
            if let Some(function) = function
                && COUNTER_FUNCTIONS.contains(&function.as_str())
                && kind != "counter"
                && kind != "histogram"
            {
                problems.push(format!("{function}() of the {kind} `{name}`, in `{expr}`"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard and the agent disagree:\n  {}\nexported: {:?}",
        problems.join("\n  "),
        exported.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_readme_table_lists_every_family_with_its_type() {
    let section = README
        .split_once("### Metrics")
        .expect("a `### Metrics` section in the README")
        .1;
    let mut documented = BTreeMap::new();
    for row in section.lines().skip_while(|l| !l.starts_with('|')) {
        let Some(row) = row.strip_prefix('|') else {
            break; // the end of the table
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, kind) = (cells[0], cells.get(1).copied().unwrap_or_default());
        for name in names.split('`').skip(1).step_by(2) {
            documented.insert(name.to_string(), kind.to_string());
        }
    }
    assert_eq!(
        documented,
        families(),
        "the README's metric table (left) and the families the agent exports (right)"
    );
}
