use agent_common::action;

use super::{compile::*, *};

const CATALOG: &str = "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n  - name: anthropic\n    api: anthropic\n    hosts: [api.anthropic.com]\n";

fn catalog() -> Catalog {
    Catalog::parse("endpoints.yaml", CATALOG).unwrap()
}

fn policy(text: &str) -> Policy {
    Policy::parse("policy.yaml", text, &catalog()).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> String {
    Policy::parse("policy.yaml", text, &catalog())
        .map(|_| String::new())
        .unwrap_err()
        .to_string()
}

const MIXED: &str = r#"
default_action: monitor
rules:
  - name: curl-allowed
    match:
      exe: [/usr/bin/curl]
    action: allow
  - name: batch-unit-blocked
    match:
      unit: [batch-*.service]
    action: block
  - name: no-anthropic
    match:
      provider: [anthropic]
    action: block
"#;

#[test]
fn first_match_wins_across_levels() {
    let mut ids = Ids::default();
    let compiled = Compiled::new(policy(MIXED), &catalog(), &mut ids).unwrap();
    let openai = ids.provider("openai").unwrap() as usize;
    let anthropic = ids.provider("anthropic").unwrap() as usize;

    let global = compiled.global_entry();
    assert_eq!(global.actions[openai], action::NONE, "no rule: default");
    assert_eq!(global.actions[anthropic], action::BLOCK);
    assert_eq!(ids.rule_name(global.rules[anthropic]), Some("no-anthropic"));

    let batch = CgroupFacts {
        path: "/system.slice/batch-nightly.service",
        unit: Some("batch-nightly.service"),
        ..Default::default()
    };
    let cgroup = compiled.entry(None, Some(&batch));
    assert_eq!(cgroup.actions[openai], action::BLOCK);
    assert_eq!(
        ids.rule_name(cgroup.rules[openai]),
        Some("batch-unit-blocked")
    );

    // curl in the batch unit: the exe rule comes first and wins.
    let curl = ProcFacts {
        exe: Some("/usr/bin/curl"),
        comm: "curl",
        uid: 0,
        user: Some("root"),
        ..Default::default()
    };
    let proc = compiled.entry(Some(&curl), Some(&batch));
    assert_eq!(proc.actions[openai], action::ALLOW);
    assert_eq!(proc.actions[anthropic], action::ALLOW);

    // Another process in the unit gets exactly its cgroup's verdicts, so
    // the agent writes no per-process entry for it.
    let python = ProcFacts {
        exe: Some("/usr/bin/python3"),
        comm: "python3",
        ..Default::default()
    };
    assert_eq!(compiled.entry(Some(&python), Some(&batch)), cgroup);
    assert!(compiled.policy.has_process_rules());
}

#[test]
fn globs_keep_to_path_segments() {
    let p = policy(
        "rules:\n  - name: bin\n    match:\n      exe: [\"/usr/bin/*\"]\n    action: block\n  - name: deep\n    match:\n      exe: [\"/opt/**/python3*\"]\n    action: block\n",
    );
    let exe = |path: &'static str| ProcFacts {
        exe: Some(path),
        ..Default::default()
    };
    let rule = |path| {
        p.evaluate(Some(&exe(path)), None, "openai")
            .map(|(_, r)| r.name.as_str())
    };
    assert_eq!(rule("/usr/bin/curl"), Some("bin"));
    assert_eq!(rule("/usr/bin/x/curl"), None, "* stays within a segment");
    assert_eq!(rule("/opt/venv/app/bin/python3.11"), Some("deep"));
}

#[test]
fn users_match_by_name_or_uid() {
    let p = policy(
        "rules:\n  - name: u\n    match:\n      user: [alice, 1001, \"1002\"]\n    action: block\n",
    );
    let facts = |uid, user| ProcFacts {
        uid,
        user,
        ..Default::default()
    };
    assert!(
        p.evaluate(Some(&facts(1000, Some("alice"))), None, "openai")
            .is_some()
    );
    assert!(
        p.evaluate(Some(&facts(1001, None)), None, "openai")
            .is_some()
    );
    assert!(
        p.evaluate(Some(&facts(1002, Some("bob"))), None, "openai")
            .is_some()
    );
    assert!(
        p.evaluate(Some(&facts(1003, Some("bob"))), None, "openai")
            .is_none()
    );
}

#[test]
fn containers_match_by_id_prefix_and_runtime() {
    let p = policy(
        "rules:\n  - name: c\n    match:\n      container: [0123456789ab]\n      runtime: [docker]\n    action: block\n",
    );
    let id = format!("0123456789ab{}", "c".repeat(52));
    let facts = |runtime| CgroupFacts {
        path: "/system.slice/docker-x.scope",
        container_id: Some(id.as_str()),
        runtime,
        ..Default::default()
    };
    use crate::identity::cgroup_path::ContainerRuntime;
    assert!(
        p.evaluate(None, Some(&facts(Some(ContainerRuntime::Docker))), "openai")
            .is_some()
    );
    assert!(
        p.evaluate(None, Some(&facts(Some(ContainerRuntime::Podman))), "openai")
            .is_none()
    );
    assert!(
        p.evaluate(None, None, "openai").is_none(),
        "unknown cgroup: no match"
    );
}

#[test]
fn errors_name_line_and_field() {
    let text = "default_action: monitor\nrules:\n  - name: a\n    match:\n      comm: [a-very-long-process-name]\n    action: block\n";
    let err = errors(text);
    assert!(err.starts_with("policy.yaml:5:"), "{err}");
    assert!(err.contains("rules[0].match.comm"), "{err}");
    assert!(err.contains("15"), "{err}");

    let err =
        errors("rules:\n  - name: a\n    match:\n      provider: [closedai]\n    action: block\n");
    assert!(err.contains("policy.yaml:2:"), "line of the rule: {err}");
    assert!(err.contains("unknown provider `closedai`"), "{err}");
    assert!(
        err.contains("openai, anthropic"),
        "lists what exists: {err}"
    );

    let err = errors("rules:\n  - name: a\n    action: explode\n");
    assert!(err.contains("policy.yaml:3:"), "{err}");
    assert!(err.contains("unknown variant `explode`"), "{err}");

    let err = errors("rules:\n  - name: a\n    action: block\n  - name: a\n    action: allow\n");
    assert!(err.contains("policy.yaml:4:"), "second definition: {err}");
    assert!(err.contains("used twice"), "{err}");

    let err = errors("rules:\n  - name: a\n    mtach: {}\n    action: block\n");
    assert!(err.contains("unknown field `mtach`"), "{err}");
}

#[test]
fn shadowed_rules_are_errors() {
    let err = errors(
        "rules:\n  - name: all-openai\n    match:\n      provider: [openai]\n    action: block\n  - name: curl-openai\n    match:\n      exe: [/usr/bin/curl]\n      provider: [openai]\n    action: allow\n",
    );
    assert!(err.contains("can never match"), "{err}");
    assert!(err.contains("`all-openai`"), "{err}");
    // Narrower first, broader after: fine.
    policy(
        "rules:\n  - name: curl-openai\n    match:\n      exe: [/usr/bin/curl]\n      provider: [openai]\n    action: allow\n  - name: all-openai\n    match:\n      provider: [openai]\n    action: block\n",
    );
}

#[test]
fn redirect_and_passthrough_are_actions() {
    let p = policy(
        "default_action: redirect\nrules:\n  - name: pinned\n    match:\n      comm: [pinned-app]\n    action: passthrough\n",
    );
    assert_eq!(p.default_action, Action::Redirect);
    assert_eq!(p.rules[0].action, Action::Passthrough);
}

#[test]
fn ids_are_stable_across_reloads() {
    let mut ids = Ids::default();
    let a = ids.provider("openai").unwrap();
    let r = ids.rule("x").unwrap();
    ids.provider("anthropic").unwrap();
    assert_eq!(ids.provider("openai").unwrap(), a);
    assert_eq!(ids.rule("x").unwrap(), r);
    assert_eq!(ids.rule_name(r), Some("x"));
}

#[test]
fn shipped_policy_is_valid_and_monitors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let catalog = Catalog::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy::load(&dir, &catalog).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.default_action, Action::Monitor);
    assert!(policy.rules.is_empty(), "the default blocks nothing");
}

#[test]
fn rules_for_signed_providers_alone_cannot_redact() {
    let catalog = Catalog::parse(
        "endpoints.yaml",
        &format!(
            "{CATALOG}  - name: bedrock\n    api: bedrock\n    hosts: [bedrock-runtime.us-east-1.amazonaws.com]\n"
        ),
    )
    .unwrap();
    let load = |providers: &str, action: &str| {
        let text = format!(
            "default_action: redirect\nrules:\n  - name: protect\n    match:\n      provider: [{providers}]\n    action: redirect\n    controls:\n      data: {{pii: {action}}}\n"
        );
        Policy::parse("policy.yaml", &text, &catalog)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = load("bedrock", "redact").unwrap_err();
    assert!(
        err.contains(".controls.data.pii") && err.contains("signed (SigV4)"),
        "{err}"
    );
    assert!(err.contains("use block or alert"), "says what to do: {err}");
    load("bedrock", "block").unwrap();
    load("bedrock", "alert").unwrap();
    // With other providers the rule redacts theirs; a signed request is
    // refused at the proxy instead.
    load("bedrock, openai", "redact").unwrap();
    load("openai", "redact").unwrap();
}
