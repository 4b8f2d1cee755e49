//! What the exec hook is told: verdicts by executable, for unvetted files
//! and for memfds; and the exe identity conditions.

use agent_common::action;

use super::{compile::*, *};

const CATALOG: &str = "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n  - name: anthropic\n    api: anthropic\n    hosts: [api.anthropic.com]\n";
const CURL_SHA: &str = "27125f0331490b7fbf4da11f2bd913ce1b94e071367b2fa8e535ce8c5526e29c";

fn compiled(text: &str, ids: &mut Ids) -> Compiled {
    let catalog = Catalog::parse("endpoints.yaml", CATALOG).unwrap();
    let mut policy = Policy::parse("policy.yaml", text, &catalog).unwrap_or_else(|e| panic!("{e}"));
    let digests =
        std::collections::HashMap::from([("/usr/bin/curl".to_string(), CURL_SHA.to_string())]);
    policy.set_exe_digests(&digests);
    Compiled::new(policy, &catalog, ids).unwrap()
}

fn exe<'a>(path: &'a str, sha: Option<&'a str>) -> ProcFacts<'a> {
    ProcFacts {
        exe: Some(path),
        exe_sha256: sha,
        ..ProcFacts::default()
    }
}

#[test]
fn a_literal_exe_path_matches_a_copy_by_digest() {
    let mut ids = Ids::default();
    let c = compiled(
        "default_action: monitor\nrules:\n  - name: no-curl\n    match:\n      exe: [/usr/bin/curl]\n    action: block\n",
        &mut ids,
    );
    let openai = ids.provider("openai").unwrap() as usize;
    let copy = c.exe_entry(&exe("/tmp/x/my-tool", Some(CURL_SHA)));
    assert_eq!(copy.actions[openai], action::BLOCK, "a copy of curl");
    assert_eq!(ids.rule_name(copy.rules[openai]), Some("no-curl"));
    let other = c.exe_entry(&exe("/usr/bin/wget", Some(&"0".repeat(64))));
    assert_eq!(
        other.actions[openai],
        action::NONE,
        "another program: no entry"
    );
    assert!(c.policy.has_exe_rules());
}

#[test]
fn the_exec_hook_decides_only_what_nothing_else_can_change() {
    let mut ids = Ids::default();
    // A cgroup rule first: whether it matches is not known at exec.
    let c = compiled(
        "default_action: monitor\nrules:\n  - name: batch\n    match:\n      unit: [batch.service]\n    action: allow\n  - name: no-curl\n    match:\n      exe: [/usr/bin/curl]\n    action: block\n",
        &mut ids,
    );
    let openai = ids.provider("openai").unwrap() as usize;
    let entry = c.exe_entry(&exe("/usr/bin/curl", Some(CURL_SHA)));
    assert_eq!(entry.actions[openai], action::NONE, "left to the agent");

    // exe combined with a user: not decided in the kernel either.
    let c = compiled(
        "default_action: monitor\nrules:\n  - name: alice-curl\n    match:\n      exe: [/usr/bin/curl]\n      user: [alice]\n    action: block\n",
        &mut ids,
    );
    let entry = c.exe_entry(&exe("/usr/bin/curl", Some(CURL_SHA)));
    assert_eq!(entry.actions[openai], action::NONE);
}

#[test]
fn unvetted_files_get_the_strictest_exe_verdict_per_provider() {
    let mut ids = Ids::default();
    let c = compiled(
        "default_action: monitor\nrules:\n  - name: no-curl-openai\n    match:\n      exe: [/usr/bin/curl]\n      provider: [openai]\n    action: block\n  - name: tools-via-proxy\n    match:\n      exe: [\"/opt/tools/*\"]\n    action: redirect\n",
        &mut ids,
    );
    let openai = ids.provider("openai").unwrap() as usize;
    let anthropic = ids.provider("anthropic").unwrap() as usize;
    let rule = ids.rule("(unvetted executable)").unwrap();
    let entry = c.unvetted_entry(rule);
    assert_eq!(entry.actions[openai], action::BLOCK);
    assert_eq!(entry.actions[anthropic], action::REDIRECT);
    assert_eq!(entry.rules[openai], rule);
}

#[test]
fn memfds_match_anonymous_exec_rules_and_are_unvetted_for_digest_rules() {
    let mut ids = Ids::default();
    let c = compiled(
        "default_action: monitor\nrules:\n  - name: no-memfd\n    match:\n      anonymous_exec: true\n      provider: [anthropic]\n    action: block\n  - name: no-curl\n    match:\n      exe: [/usr/bin/curl]\n      provider: [openai]\n    action: block\n",
        &mut ids,
    );
    let openai = ids.provider("openai").unwrap() as usize;
    let anthropic = ids.provider("anthropic").unwrap() as usize;
    let rule = ids.rule("(unvetted executable)").unwrap();
    let entry = c.anonymous_entry(rule);
    assert_eq!(entry.actions[anthropic], action::BLOCK);
    assert_eq!(ids.rule_name(entry.rules[anthropic]), Some("no-memfd"));
    // The memfd's bytes may be curl's: blocked until the agent knows.
    assert_eq!(entry.actions[openai], action::BLOCK);
    assert_eq!(entry.rules[openai], rule);

    let memfd = ProcFacts {
        exe: Some("/memfd:x (deleted)"),
        anonymous_exec: true,
        ..ProcFacts::default()
    };
    let matched = c.policy.evaluate(Some(&memfd), None, "anthropic");
    assert_eq!(matched.map(|(_, r)| r.name.as_str()), Some("no-memfd"));
}

#[test]
fn exe_sha256_is_checked_and_matched() {
    let catalog = Catalog::parse("endpoints.yaml", CATALOG).unwrap();
    let bad = Policy::parse(
        "policy.yaml",
        "rules:\n  - name: x\n    match:\n      exe_sha256: [abc]\n    action: block\n",
        &catalog,
    )
    .map(|_| String::new())
    .unwrap_err()
    .to_string();
    assert!(bad.contains("64 hex characters"), "{bad}");
    let upper = CURL_SHA.to_ascii_uppercase();
    let p = Policy::parse(
        "policy.yaml",
        &format!("rules:\n  - name: by-digest\n    match:\n      exe_sha256: [{upper}]\n    action: block\n"),
        &catalog,
    )
    .unwrap();
    let hit = p.evaluate(Some(&exe("/anywhere", Some(CURL_SHA))), None, "openai");
    assert_eq!(hit.map(|(_, r)| r.name.as_str()), Some("by-digest"));
    assert!(
        p.evaluate(Some(&exe("/anywhere", None)), None, "openai")
            .is_none()
    );
}
