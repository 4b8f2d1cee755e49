//! Folding the ordered rules into what the kernel looks up at connect():
//! a global entry, per-cgroup entries and per-process entries.

use agent_common::{PolicyEntry, RULE_DEFAULT, action, limits::UNNAMED_PROVIDER};
use thiserror::Error;

use super::{CgroupFacts, Policy, ProcFacts};
use crate::catalog::Catalog;

#[derive(Debug, Error)]
pub enum IdError {
    #[error(
        "more than {UNNAMED_PROVIDER} distinct provider names were loaded since the agent started; restart the agent to renumber them"
    )]
    TooManyProviders,
    #[error(
        "more than 65534 distinct rule names were loaded since the agent started; restart the agent to renumber them"
    )]
    TooManyRules,
}

/// Stable numbers for provider and rule names, for the agent's lifetime:
/// an event decided under an older policy still names the right rule.
#[derive(Debug, Default)]
pub struct Ids {
    providers: Vec<String>,
    rules: Vec<String>,
}

impl Ids {
    pub fn provider(&mut self, name: &str) -> Result<u32, IdError> {
        if let Some(id) = self.providers.iter().position(|p| p == name) {
            return Ok(id as u32);
        }
        if self.providers.len() >= UNNAMED_PROVIDER {
            return Err(IdError::TooManyProviders);
        }
        self.providers.push(name.to_string());
        Ok(self.providers.len() as u32 - 1)
    }

    pub fn rule(&mut self, name: &str) -> Result<u16, IdError> {
        if let Some(id) = self.rules.iter().position(|r| r == name) {
            return Ok(id as u16);
        }
        if self.rules.len() >= usize::from(RULE_DEFAULT) {
            return Err(IdError::TooManyRules);
        }
        self.rules.push(name.to_string());
        Ok(self.rules.len() as u16 - 1)
    }

    pub fn provider_name(&self, id: u32) -> Option<&str> {
        self.providers.get(id as usize).map(String::as_str)
    }

    pub fn rule_name(&self, id: u16) -> Option<&str> {
        self.rules.get(usize::from(id)).map(String::as_str)
    }
}

/// A policy with every name numbered, ready to produce kernel entries.
#[derive(Debug)]
pub struct Compiled {
    /// (provider id, provider name) for every catalog provider.
    providers: Vec<(u32, String)>,
    /// Rule ids in policy order.
    rule_ids: Vec<u16>,
    pub policy: Policy,
}

impl Compiled {
    pub fn new(policy: Policy, catalog: &Catalog, ids: &mut Ids) -> Result<Compiled, IdError> {
        let providers = catalog
            .providers
            .iter()
            .map(|p| Ok((ids.provider(&p.name.0)?, p.name.0.clone())))
            .collect::<Result<Vec<_>, IdError>>()?;
        let rule_ids = policy
            .rules
            .iter()
            .map(|r| ids.rule(&r.name))
            .collect::<Result<Vec<_>, IdError>>()?;
        Ok(Compiled {
            providers,
            rule_ids,
            policy,
        })
    }

    /// The verdict per provider for what is known; providers no rule matches
    /// stay `NONE`, so the kernel falls through to the next level.
    pub fn entry(
        &self,
        proc: Option<&ProcFacts<'_>>,
        cgroup: Option<&CgroupFacts<'_>>,
    ) -> PolicyEntry {
        let mut entry = PolicyEntry::EMPTY;
        for (id, name) in &self.providers {
            let Some((index, rule)) = self.policy.evaluate(proc, cgroup, name) else {
                continue;
            };
            let slot = *id as usize;
            // A rule that looks inside requests (or changes them) can only
            // be applied by the proxy: the kernel sends the traffic there,
            // and the proxy evaluates the whole list per request.
            entry.actions[slot] = if rule.needs_proxy() {
                agent_common::action::REDIRECT
            } else {
                rule.action.to_kernel()
            };
            entry.rules[slot] = self.rule_ids[index];
        }
        self.fold_unnamed(&mut entry);
        entry
    }

    /// The verdict for a model API the kernel cannot name (first bytes it
    /// cannot read): strict (`BLOCK`) when this level is strict for any
    /// provider, since the bytes could be that provider's; else no opinion
    /// while some provider falls through to the next level; else monitor.
    fn fold_unnamed(&self, entry: &mut PolicyEntry) {
        let actions = self
            .providers
            .iter()
            .map(|(id, _)| entry.actions[*id as usize]);
        let strict = actions
            .clone()
            .any(|a| !matches!(a, action::NONE | action::ALLOW | action::MONITOR));
        entry.actions[UNNAMED_PROVIDER] = if strict {
            action::BLOCK
        } else if actions.clone().any(|a| a == action::NONE) {
            action::NONE
        } else {
            action::MONITOR
        };
        entry.rules[UNNAMED_PROVIDER] = RULE_DEFAULT;
    }

    /// For identities that match no identity condition: kept under cgroup
    /// id 0, which no real cgroup has.
    pub fn global_entry(&self) -> PolicyEntry {
        self.entry(None, None)
    }

    pub fn has_any_verdict(entry: &PolicyEntry) -> bool {
        entry.actions.iter().any(|a| *a != action::NONE)
    }
}
