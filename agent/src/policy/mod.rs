//! The policy: a default action and ordered rules over identity × provider.
//! First match wins; every verdict names the rule that made it.

pub mod compile;
mod rules;

use std::{fmt, path::Path};

use serde::{Deserialize, Serialize};

pub use self::rules::{CgroupFacts, ProcFacts, Rule};
use crate::{
    catalog::Catalog,
    yaml::{self, FileError, FileErrors},
};

pub const FILE_NAME: &str = "policy.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the connection through; it is still recorded.
    Allow,
    /// Let it through and report it for review.
    Monitor,
    /// Refuse it: connect() fails with EPERM.
    Block,
    /// Send it through the local policy proxy, which terminates TLS,
    /// audits each request and forwards it.
    Redirect,
    /// Through the proxy without decrypting (for clients that pin
    /// certificates): host-level policy on the SNI, metadata-only audit.
    Passthrough,
}

impl Action {
    pub fn to_kernel(self) -> u8 {
        match self {
            Action::Allow => agent_common::action::ALLOW,
            Action::Monitor => agent_common::action::MONITOR,
            Action::Block => agent_common::action::BLOCK,
            Action::Redirect => agent_common::action::REDIRECT,
            Action::Passthrough => agent_common::action::PASSTHROUGH,
        }
    }

    pub fn from_kernel(value: u8) -> Option<Action> {
        match value {
            agent_common::action::ALLOW => Some(Action::Allow),
            agent_common::action::MONITOR => Some(Action::Monitor),
            agent_common::action::BLOCK => Some(Action::Block),
            agent_common::action::REDIRECT => Some(Action::Redirect),
            agent_common::action::PASSTHROUGH => Some(Action::Passthrough),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Monitor => "monitor",
            Action::Block => "block",
            Action::Redirect => "redirect",
            Action::Passthrough => "passthrough",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_action() -> Action {
    Action::Monitor
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "default_action")]
    default_action: Action,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub default_action: Action,
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn load(dir: &Path, catalog: &Catalog) -> Result<Policy, FileErrors> {
        let path = dir.join(FILE_NAME);
        let text = yaml::read(&path)?;
        Self::parse(&path.display().to_string(), &text, catalog)
    }

    pub fn parse(file: &str, text: &str, catalog: &Catalog) -> Result<Policy, FileErrors> {
        let parsed: PolicyFile = yaml::parse(file, text)?;
        let mut errors = Vec::new();
        let error_at = |name: &str, nth: usize, field: String, message: String| FileError {
            file: file.to_string(),
            line: yaml::line_of(text, "name", name, nth),
            column: None,
            field: Some(field),
            message,
        };
        for (index, rule) in parsed.rules.iter().enumerate() {
            let earlier = parsed.rules[..index]
                .iter()
                .filter(|r| r.name == rule.name)
                .count();
            if earlier > 0 {
                errors.push(error_at(
                    &rule.name,
                    earlier,
                    format!("rules[{index}].name"),
                    format!(
                        "rule name `{}` is used twice; names must be unique",
                        rule.name
                    ),
                ));
            }
            for provider in &rule.matches.provider {
                if catalog.provider(&provider.0).is_none() {
                    errors.push(error_at(
                        &rule.name,
                        earlier,
                        format!("rules[{index}].match.provider"),
                        format!(
                            "unknown provider `{provider}`; the catalog defines: {}",
                            catalog
                                .providers
                                .iter()
                                .map(|p| p.name.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            if let Some(shadow) = parsed.rules[..index]
                .iter()
                .find(|r| r.matches.covers(&rule.matches))
            {
                errors.push(error_at(
                    &rule.name,
                    earlier,
                    format!("rules[{index}]"),
                    format!(
                        "rule `{}` can never match: the earlier rule `{}` matches everything it does",
                        rule.name, shadow.name
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(Policy {
                default_action: parsed.default_action,
                rules: parsed.rules,
            })
        } else {
            Err(FileErrors(errors))
        }
    }

    /// True when some rule depends on the process (exe, comm, user), which
    /// the kernel can only know through per-process entries.
    pub fn has_process_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches.has_process_conditions())
    }

    /// The first rule that matches, for one provider, with its index.
    pub fn evaluate(
        &self,
        proc: Option<&ProcFacts<'_>>,
        cgroup: Option<&CgroupFacts<'_>>,
        provider: &str,
    ) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches.matches(proc, cgroup, provider))
    }
}

#[cfg(test)]
mod tests;
