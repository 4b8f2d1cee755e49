//! `modelgate policy test DIR`: run the policy's test cases (files in
//! `DIR/tests/*.yaml`) and report each, so a change can be checked before
//! it is deployed.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, anyhow};
use clap::Args;
use serde::Deserialize;

use super::policy_explain::{Given, explain};
use crate::{catalog::Catalog, config, policy::Policy, yaml};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The policies directory (default: the agent's).
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    given: Given,
    expect: Expect,
}

/// Every field is optional: a case checks what it names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    connect: Option<String>,
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    /// Data classes that must be found.
    #[serde(default)]
    findings: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(config::default_policies_dir);
    let catalog = Catalog::load(&dir).map_err(|e| anyhow!("{e}"))?;
    let policy = Policy::load(&dir, &catalog).map_err(|e| anyhow!("{e}"))?;
    let tests_dir = dir.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .map_err(|e| {
            anyhow!(
                "cannot read {}: {e}; put test cases there",
                tests_dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let text = yaml::read(&file)?;
        let cases: TestFile = yaml::parse(&file.display().to_string(), &text)?;
        for case in cases.tests {
            let problems = match explain(&policy, &catalog, &case.given) {
                Ok(got) => {
                    let mut problems = Vec::new();
                    let mut check = |what: &str, want: &Option<String>, got: &str| {
                        if let Some(want) = want
                            && want != got
                        {
                            problems.push(format!("{what}: expected `{want}`, got `{got}`"));
                        }
                    };
                    check("connect", &case.expect.connect, got.connect.as_str());
                    check("decision", &case.expect.decision, got.decision);
                    check("rule", &case.expect.rule, &got.rule);
                    for class in &case.expect.findings {
                        if !got.findings.iter().any(|f| &f.class == class) {
                            problems.push(format!("findings: expected `{class}`, not found"));
                        }
                    }
                    problems
                }
                Err(err) => vec![format!("cannot evaluate: {err:#}")],
            };
            if problems.is_empty() {
                passed += 1;
                println!("PASS {}", case.name);
            } else {
                failed += 1;
                println!("FAIL {} ({})", case.name, file.display());
                for problem in problems {
                    println!("     {problem}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
