//! The layering of DESIGN.md, checked on the sources: no import cycle
//! between the agent's top-level modules, and `policy/` — which decides
//! without knowing how a decision is carried out or written down — imports
//! no proxy, kernel loader, record writer or face. Also: no file so long
//! that it holds more than one job, and `anyhow` only at the binary's edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// What `policy/` may use besides itself: the pure readers of bytes and
/// files below it, and its budget.
const POLICY_MAY_USE: &[&str] = &[
    "budget",
    "catalog",
    "classify",
    "identity",
    "inspect",
    "providers",
    "yaml",
];

/// Top-level module → (module it uses → files that use it).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The top-level modules a source file names through `crate::`: in paths
/// (`crate::proxy::Conn`) and in grouped imports (`use crate::{audit, policy::X}`).
fn uses(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.insert(ident(item.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found
}

/// The graph of `files` (path relative to `src/`, text).
fn graph<'a>(files: impl IntoIterator<Item = (String, &'a str)>) -> Graph {
    let mut graph = Graph::new();
    for (path, text) in files {
        let top = path
            .split('/')
            .next()
            .unwrap_or(&path)
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        for used in uses(text) {
            if used != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(used)
                    .or_default()
                    .insert(path.clone());
            }
        }
    }
    graph
}

/// One cycle, if any: modules in order, each using the next, the last
/// using the first.
fn a_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// What breaks the rules, one line each.
fn problems(graph: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(cycle) = a_cycle(graph) {
        let steps: Vec<String> = cycle
            .iter()
            .zip(cycle.iter().cycle().skip(1))
            .map(|(from, to)| {
                let files: Vec<&str> = graph[from][to].iter().map(String::as_str).collect();
                format!("{from} -> {to} ({})", files.join(", "))
            })
            .collect();
        problems.push(format!("import cycle: {}", steps.join("; ")));
    }
    for (used, files) in graph.get("policy").into_iter().flatten() {
        if !POLICY_MAY_USE.contains(&used.as_str()) {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            problems.push(format!(
                "policy imports {used} ({}): a decision must not know how it is carried out \
                 or written down; move the shared type down (DESIGN.md, Layering)",
                files.join(", ")
            ));
        }
    }
    problems
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files
}

#[test]
fn the_modules_form_no_cycle_and_policy_uses_only_what_is_below_it() {
    let files = sources();
    let graph = graph(files.iter().map(|(p, t)| (p.clone(), t.as_str())));
    assert!(
        graph.contains_key("policy") && graph.contains_key("proxy"),
        "{graph:?}"
    );
    let problems = problems(&graph);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_finds_a_forbidden_import_and_a_cycle() {
    let files = [
        (
            "policy/decide.rs",
            "use crate::{catalog::Api, proxy::{Conn, x}};\n// crate::audit in a comment\n",
        ),
        ("proxy/mod.rs", "use crate::policy::Policy;\n"),
        ("catalog/mod.rs", "fn f() { crate::identity::g(); }\n"),
    ];
    let graph = graph(files.map(|(p, t)| (p.to_string(), t)));
    let problems = problems(&graph);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("import cycle: ")
            && problems[0].contains("policy -> proxy (policy/decide.rs)")
            && problems[0].contains("proxy -> policy (proxy/mod.rs)"),
        "{problems:#?}"
    );
    assert!(problems[1].starts_with("policy imports proxy (policy/decide.rs)"));
    assert!(
        !problems.iter().any(|p| p.contains("audit")),
        "comments are not imports"
    );
}

/// A file past this is doing more than one job: split it by job (the way
/// `daemon/` and `proxy/` are) before adding to it.
const MAX_LINES: usize = 600;

#[test]
fn no_source_file_is_longer_than_one_job_needs() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| text.lines().count() > MAX_LINES)
        .map(|(path, text)| format!("{path}: {} lines", text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}

/// Where `anyhow` may be used: the binary's edge, which turns any error
/// into a message for a person (the CLI commands, the daemon that `run`
/// wires and drives, the bench helper). Library modules return typed
/// errors a caller can match on.
const ANYHOW_AT: &[&str] = &["cli/", "daemon/", "bin/", "main.rs"];

fn anyhow_outside_the_edge<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    files
        .filter(|(path, _)| !ANYHOW_AT.iter().any(|edge| path.starts_with(edge)))
        // This file names it in its own test data.
        .filter(|(path, _)| *path != "layering_tests.rs")
        .filter(|(_, text)| {
            text.lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .any(|line| line.contains("anyhow::") || line.contains("anyhow!"))
        })
        .map(|(path, _)| path.to_string())
        .collect()
}

#[test]
fn library_modules_return_typed_errors() {
    let files = sources();
    let found = anyhow_outside_the_edge(files.iter().map(|(p, t)| (p.as_str(), t.as_str())));
    assert!(
        found.is_empty(),
        "anyhow outside cli/, daemon/ and bin/ (give the module a thiserror enum): {}",
        found.join(", ")
    );
    let synthetic = [
        ("proxy/ca.rs", "use anyhow::Result;\n"),
        ("cli/run.rs", "use anyhow::Result;\n"),
        ("errors.rs", "// like anyhow::Error's {:#}\n"),
    ];
    assert_eq!(
        anyhow_outside_the_edge(synthetic.into_iter()),
        ["proxy/ca.rs"]
    );
}
