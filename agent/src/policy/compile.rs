//! Folding the ordered rules into what the kernel looks up at connect():
//! a global entry, per-cgroup entries and per-process entries.

use agent_common::{PolicyEntry, RULE_DEFAULT, action, limits::UNNAMED_PROVIDER};
use thiserror::Error;

use super::{CgroupFacts, Match, Policy, ProcFacts, Rule};
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

    /// What the exec hook writes for a process running the file `exe`
    /// describes (its path, digest, whether anonymous): per provider, the
    /// verdict of the first rule that matches whatever the process's
    /// other facts are. Where an earlier rule depends on facts the hook
    /// does not know (comm, user, cgroup), or the deciding rule names no
    /// executable, the provider stays `NONE`: the cgroup level applies
    /// until the agent has evaluated the process.
    pub fn exe_entry(&self, exe: &ProcFacts<'_>) -> PolicyEntry {
        self.walk_exe(|m| Some(m.exe_conditions_hold(exe)), None)
    }

    /// For a file the agent has not vetted yet: per provider, `BLOCK` when
    /// some rule naming executables blocks it, else `REDIRECT` when one
    /// sends it through the proxy (which decides with the full identity
    /// once the agent has vetted the file), else `NONE`.
    pub fn unvetted_entry(&self, rule: u16) -> PolicyEntry {
        let mut entry = PolicyEntry::EMPTY;
        for (id, name) in &self.providers {
            let slot = *id as usize;
            for r in &self.policy.rules {
                let m = &r.matches;
                if !m.has_exe_conditions()
                    || (!m.provider.is_empty() && !m.provider.iter().any(|p| p.0 == *name))
                {
                    continue;
                }
                let kernel = self.kernel_action(r);
                if kernel == action::BLOCK {
                    entry.actions[slot] = action::BLOCK;
                    entry.rules[slot] = rule;
                    break;
                }
                if kernel == action::REDIRECT || kernel == action::PASSTHROUGH {
                    entry.actions[slot] = action::REDIRECT;
                    entry.rules[slot] = rule;
                }
            }
        }
        self.fold_unnamed(&mut entry);
        entry
    }

    /// For a memfd or a deleted file: rules with only `anonymous_exec`
    /// decide; where a rule matching by path or digest comes first (the
    /// bytes may be a blocked program's), the unvetted verdict applies.
    pub fn anonymous_entry(&self, unvetted_rule: u16) -> PolicyEntry {
        let unvetted = self.unvetted_entry(unvetted_rule);
        let anonymous = ProcFacts {
            anonymous_exec: true,
            ..ProcFacts::default()
        };
        self.walk_exe(
            |m| {
                if !m.exe.is_empty() || !m.exe_sha256.is_empty() {
                    None
                } else {
                    Some(m.exe_conditions_hold(&anonymous))
                }
            },
            Some(&unvetted),
        )
    }

    /// The ordered walk behind `exe_entry` and `anonymous_entry`:
    /// `holds` says whether a rule's exe conditions hold (None: unknown,
    /// then `unknown` gives the provider's verdict, or NONE).
    fn walk_exe(
        &self,
        holds: impl Fn(&Match) -> Option<bool>,
        unknown: Option<&PolicyEntry>,
    ) -> PolicyEntry {
        let mut entry = PolicyEntry::EMPTY;
        for (id, name) in &self.providers {
            let slot = *id as usize;
            for (index, rule) in self.policy.rules.iter().enumerate() {
                let m = &rule.matches;
                if !m.provider.is_empty() && !m.provider.iter().any(|p| p.0 == *name) {
                    continue;
                }
                let hold = if m.has_exe_conditions() {
                    holds(m)
                } else {
                    Some(true)
                };
                match hold {
                    Some(false) => continue,
                    None => {
                        if let Some(unknown) = unknown {
                            entry.actions[slot] = unknown.actions[slot];
                            entry.rules[slot] = unknown.rules[slot];
                        }
                        break;
                    }
                    Some(true) => {}
                }
                // It may match: decided here only when nothing else about
                // the process can change that, and it names executables.
                if m.has_exe_conditions() && !m.has_non_exe_identity_conditions() {
                    entry.actions[slot] = self.kernel_action(rule);
                    entry.rules[slot] = self.rule_ids[index];
                }
                break;
            }
        }
        self.fold_unnamed(&mut entry);
        entry
    }

    fn kernel_action(&self, rule: &Rule) -> u8 {
        if rule.needs_proxy() {
            action::REDIRECT
        } else {
            rule.action.to_kernel()
        }
    }

    /// For identities that match no identity condition: kept under cgroup
    /// id 0, which no real cgroup has.
    /// A quarantined process: every provider refused, in the name of the
    /// rule that quarantined it.
    pub fn quarantine_entry(rule: u16) -> PolicyEntry {
        PolicyEntry {
            actions: [agent_common::action::BLOCK; agent_common::limits::MAX_PROVIDERS],
            rules: [rule; agent_common::limits::MAX_PROVIDERS],
        }
    }

    pub fn global_entry(&self) -> PolicyEntry {
        self.entry(None, None)
    }

    pub fn has_any_verdict(entry: &PolicyEntry) -> bool {
        entry.actions.iter().any(|a| *a != action::NONE)
    }
}
