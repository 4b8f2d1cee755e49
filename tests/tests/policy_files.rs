//! Invalid policy files: a clear error with file and line, from `policy
//! check` and on reload, where the last good policy stays in force.

use std::{fs, process::Command, time::Duration};

use modelgate_tests::{Agent, AgentSpec, Listener, TestCgroup, agent_bin, output, require_root};

const BAD_POLICY: &str = "default_action: block\nrules:\n  - name: x\n    match:\n      exe: [\"/usr/bin/[curl\"]\n    action: block\n";

#[test]
fn policy_check_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("endpoints.yaml"),
        "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n",
    )
    .unwrap();
    fs::write(dir.path().join("policy.yaml"), BAD_POLICY).unwrap();
    let out = output(
        Command::new(agent_bin())
            .arg("policy")
            .arg("check")
            .arg(dir.path()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 1 on error; stderr: {stderr}"
    );
    assert!(
        stderr.contains("policy.yaml:5:"),
        "file and line 5: {stderr}"
    );
    assert!(
        stderr.contains("rules[0].match.exe"),
        "field path: {stderr}"
    );
    assert!(stderr.contains("invalid glob"), "what is wrong: {stderr}");

    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = output(
        Command::new(agent_bin())
            .arg("policy")
            .arg("check")
            .arg(&shipped),
    );
    assert!(
        out.status.success(),
        "the shipped policies must pass: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reload_with_an_invalid_policy_keeps_the_old_one() {
    require_root();
    let cgroup = TestCgroup::new("reload");
    let listener = Listener::start("127.0.0.9:0");
    let port = listener.addr.port();
    let mut agent = Agent::start(AgentSpec {
        cgroup: &cgroup,
        endpoints: &format!(
            "providers:\n  - name: openai\n    api: openai\n    ports: [{port}]\n    addresses: [127.0.0.9]\n"
        ),
        policy: "default_action: block\nrules: []\n",
        extra_args: &[],
        hosts_file: None,
        agent_in_cgroup: false,
        config: "",
        state_tmpfs: None,
    });
    let connect = || {
        let out = output(
            cgroup
                .command("python3")
                .args([
                    "-c",
                    "import socket,sys\ntry:\n  socket.create_connection(('127.0.0.9', int(sys.argv[1])));print('connected')\nexcept PermissionError:\n  print('EPERM')",
                    &port.to_string(),
                ]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(connect(), "EPERM", "the first policy blocks");

    fs::write(agent.policies_dir().join("policy.yaml"), BAD_POLICY).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("reload refused", Duration::from_secs(10));
    let log = agent.log_text();
    assert!(
        log.contains("policy.yaml:5"),
        "the reload error names file and line: {log}"
    );
    assert_eq!(connect(), "EPERM", "the old policy is still in force");

    fs::write(
        agent.policies_dir().join("policy.yaml"),
        "default_action: monitor\nrules: []\n",
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("policy reloaded", Duration::from_secs(10));
    assert_eq!(connect(), "connected", "a valid reload takes effect");
}

/// Every shipped example is a valid policy against the shipped catalog and
/// passes its own test cases, run the way an operator runs them.
#[test]
fn shipped_examples_check_and_pass_their_tests() {
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let examples = policies.join("examples");
    let mut ran_cases = 0;
    for entry in fs::read_dir(&examples).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = tempfile::tempdir().unwrap();
        fs::copy(
            policies.join("endpoints.yaml"),
            dir.path().join("endpoints.yaml"),
        )
        .unwrap();
        fs::copy(policies.join("prices.yaml"), dir.path().join("prices.yaml")).unwrap();
        fs::copy(&path, dir.path().join("policy.yaml")).unwrap();
        let out = output(
            Command::new(agent_bin())
                .args(["policy", "check"])
                .arg(dir.path()),
        );
        assert!(
            out.status.success(),
            "example {name} does not pass policy check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cases = examples.join("tests").join(format!("{name}.yaml"));
        if cases.exists() {
            fs::create_dir(dir.path().join("tests")).unwrap();
            fs::copy(&cases, dir.path().join("tests/cases.yaml")).unwrap();
            let out = output(
                Command::new(agent_bin())
                    .args(["policy", "test"])
                    .arg(dir.path()),
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "example {name}'s tests fail:\n{stdout}"
            );
            ran_cases += stdout.matches("PASS").count();
        }
    }
    assert!(ran_cases >= 2, "the example test cases ran ({ran_cases})");
}

#[test]
fn policy_test_reports_a_failing_case_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    fs::copy(
        shipped.join("endpoints.yaml"),
        dir.path().join("endpoints.yaml"),
    )
    .unwrap();
    fs::write(
        dir.path().join("policy.yaml"),
        "default_action: block\nrules: []\n",
    )
    .unwrap();
    fs::create_dir(dir.path().join("tests")).unwrap();
    fs::write(
        dir.path().join("tests/t.yaml"),
        "tests:\n  - name: expects monitor\n    given:\n      exe: /usr/bin/curl\n      host: api.openai.com\n    expect:\n      connect: monitor\n",
    )
    .unwrap();
    let out = output(
        Command::new(agent_bin())
            .args(["policy", "test"])
            .arg(dir.path()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL expects monitor"), "{stdout}");
    assert!(
        stdout.contains("expected `monitor`, got `block`"),
        "{stdout}"
    );
}

const SCHEMA_CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
failed = 0
for path in sys.argv[2:]:
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(open(path))))
    print(path, "ok" if not errors else "; ".join(e.message for e in errors))
    failed += bool(errors)
sys.exit(1 if failed else 0)
"#;

/// The published JSON Schema accepts every shipped policy and refuses a
/// misspelt field, as `policy check` does.
#[test]
fn the_json_schema_matches_the_shipped_policies() {
    let python = std::env::var("MODELGATE_TEST_PYTHON")
        .expect("MODELGATE_TEST_PYTHON (with jsonschema and pyyaml) is set by `cargo xtask test`");
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files = vec![policies.join("policy.yaml")];
    for entry in fs::read_dir(policies.join("examples")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            files.push(entry.path());
        }
    }
    let out = output(
        Command::new(&python)
            .args(["-c", SCHEMA_CHECK])
            .arg(policies.join("policy.schema.json"))
            .args(&files),
    );
    assert!(
        out.status.success(),
        "the schema refuses a shipped policy:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        bad.path(),
        "rules:\n  - name: x\n    action: block\n    mtach: {}\n",
    )
    .unwrap();
    let out = output(
        Command::new(&python)
            .args(["-c", SCHEMA_CHECK])
            .arg(policies.join("policy.schema.json"))
            .arg(bad.path()),
    );
    assert!(
        !out.status.success(),
        "a misspelt field must fail the schema"
    );
}
