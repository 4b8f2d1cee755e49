//! The policy: a default action and ordered rules over identity × provider.
//! First match wins; every verdict names the rule that made it.

pub mod compile;
pub mod controls;
pub mod decide;
mod load;
mod rules;
mod version;

use std::{fmt, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};

pub use self::{
    controls::StorePrompts,
    load::data_action,
    rules::{CgroupFacts, Match, ProcFacts, RequestFacts, Rule},
    version::version,
};
use crate::{catalog::Catalog, classify::Classifier, yaml::FileErrors};

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
    /// A proxy verdict: refuse the request and block the identity's
    /// connects in the kernel for `quarantine_for`, with an alert.
    Quarantine,
}

impl Action {
    pub fn to_kernel(self) -> u8 {
        match self {
            Action::Allow => agent_common::action::ALLOW,
            Action::Monitor => agent_common::action::MONITOR,
            Action::Block => agent_common::action::BLOCK,
            Action::Redirect => agent_common::action::REDIRECT,
            Action::Passthrough => agent_common::action::PASSTHROUGH,
            // Only the proxy can quarantine: the kernel sends it there.
            Action::Quarantine => agent_common::action::REDIRECT,
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
            Action::Quarantine => "quarantine",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the proxy decides requests with; replaced whole on reload, so a
/// request in flight keeps the one it started with.
#[derive(Debug)]
pub struct PolicyState {
    pub policy: Policy,
    pub prices: crate::budget::Prices,
    /// `--default-action`, which wins over the policy's.
    pub default_override: Option<Action>,
}

impl PolicyState {
    pub fn default_action(&self) -> Action {
        self.default_override.unwrap_or(self.policy.default_action)
    }
}

/// The merged policy: `policy.yaml`, then `policy.d/*.yaml` in name order.
#[derive(Clone)]
pub struct Policy {
    pub default_action: Action,
    pub rules: Vec<Rule>,
    /// Built-in detectors plus the policy's `data_classes`.
    pub classifier: Arc<Classifier>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("default_action", &self.default_action)
            .field("rules", &self.rules)
            .field("classes", &self.classifier.classes().len())
            .finish()
    }
}

impl Policy {
    pub fn load(dir: &Path, catalog: &Catalog) -> Result<Policy, FileErrors> {
        load::load(dir, catalog)
    }

    /// One file on its own (tests and the fuzz target).
    pub fn parse(file: &str, text: &str, catalog: &Catalog) -> Result<Policy, FileErrors> {
        load::merge(vec![(file.to_string(), text.to_string())], catalog)
    }

    /// True when some rule depends on the process (exe, comm, user), which
    /// the kernel can only know through per-process entries.
    pub fn has_process_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches.has_process_conditions())
    }

    /// The files `exe` conditions name literally (no wildcard): their
    /// digests let a copy of one match too.
    pub fn literal_exe_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.matches.exe.iter().filter_map(|g| g.literal()))
            .map(str::to_string)
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Gives each rule the digests of the files its literal `exe` paths
    /// name (`digests`: path → hex SHA-256; a path missing there matches
    /// by path only).
    pub fn set_exe_digests(&mut self, digests: &std::collections::HashMap<String, String>) {
        for rule in &mut self.rules {
            let found: Vec<String> = rule
                .matches
                .exe
                .iter()
                .filter_map(|g| g.literal())
                .filter_map(|path| digests.get(path).cloned())
                .collect();
            rule.matches.exe_digests = found;
        }
    }

    /// True when some rule names executables (exe, exe_sha256,
    /// anonymous_exec): the kernel then decides at exec.
    pub fn has_exe_rules(&self) -> bool {
        self.rules.iter().any(|r| r.matches.has_exe_conditions())
    }

    /// The rule that decides a request, seen by the proxy with everything
    /// known: identity, provider and the request itself.
    pub fn decide_request(
        &self,
        proc: Option<&ProcFacts<'_>>,
        cgroup: Option<&CgroupFacts<'_>>,
        provider: &str,
        request: &RequestFacts<'_>,
    ) -> Option<(usize, &Rule)> {
        self.rules.iter().enumerate().find(|(_, rule)| {
            rule.matches
                .matches_request(proc, cgroup, provider, request)
        })
    }

    /// The first rule whose identity and provider conditions match (request
    /// conditions not looked at), with its index: the kernel's view.
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
#[cfg(test)]
mod tests_decide;
#[cfg(test)]
mod tests_exe;
