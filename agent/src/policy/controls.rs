//! Request-level controls a rule applies in the proxy: models, prompt
//! size, data rules, credentials, budgets and prompt storage.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::rules::ModelGlob;
use crate::budget::{BudgetKey, Limits};

/// What the audit keeps of prompts and outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorePrompts {
    /// Sizes and counts only.
    #[default]
    None,
    /// SHA-256 of the text: proves what was sent without keeping it.
    Hash,
    /// The text itself (capped at 64 KiB each).
    Full,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controls {
    /// Models this rule lets through (`allow`; empty = any) and refuses
    /// (`deny`, checked first).
    #[serde(default)]
    pub models: ModelControl,
    /// Largest prompt (bytes of message text) let through.
    #[serde(default)]
    pub max_prompt_bytes: Option<usize>,
    /// What to do when a data class is found in a prompt: keys are class
    /// names (`aws-access-key`, `email`, a custom class) or categories
    /// (`secret`, `pii`, `custom`); a class's own entry wins over its
    /// category's.
    #[serde(default)]
    pub data: BTreeMap<String, DataAction>,
    /// The provider credential the proxy injects, replacing whatever the
    /// application sent.
    #[serde(default)]
    pub credential: Option<CredentialSpec>,
    /// Keys are managed by the gateway: an application sending its own
    /// provider key raises an `unmanaged-key` alert (with its fingerprint).
    #[serde(default)]
    pub managed_keys: bool,
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
    /// Overrides the agent's `store_prompts` for requests this rule decides.
    #[serde(default)]
    pub store_prompts: Option<StorePrompts>,
    /// How long a `quarantine` keeps the identity's connects blocked in the
    /// kernel (default 10m).
    #[serde(default, with = "humantime_serde_opt")]
    pub quarantine_for: Option<Duration>,
    /// What the content controls (models, max_prompt_bytes, data) do with a
    /// request whose body the proxy cannot read the way the upstream will:
    /// an unknown or broken Content-Encoding, JSON that is not strict UTF-8
    /// JSON, a malformed multipart body.
    #[serde(default)]
    pub unparseable: Unparseable,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unparseable {
    /// Refuse it: policy cannot vouch for what it cannot read.
    #[default]
    Block,
    /// Forward it; its text is still scanned as far as it can be read, and
    /// the audit names why it was unreadable.
    Allow,
}

impl Controls {
    /// Whether the rule looks at what a request says, not only who sends it.
    pub fn reads_content(&self) -> bool {
        !self.models.allow.is_empty()
            || !self.models.deny.is_empty()
            || self.max_prompt_bytes.is_some()
            || !self.data.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.models.allow.is_empty()
            && self.models.deny.is_empty()
            && self.max_prompt_bytes.is_none()
            && self.data.is_empty()
            && self.credential.is_none()
            && !self.managed_keys
            && self.budget.is_none()
            && self.store_prompts.is_none()
            && self.quarantine_for.is_none()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelControl {
    #[serde(default)]
    pub allow: Vec<ModelGlob>,
    #[serde(default)]
    pub deny: Vec<ModelGlob>,
}

impl ModelControl {
    /// None when every model the request names may be used; otherwise why
    /// not.
    pub fn refusal_any(&self, model: Option<&str>, also: Option<&str>) -> Option<String> {
        self.refusal(model)
            .or_else(|| also.and_then(|also| self.refusal(Some(also))))
    }

    /// None when the model may be used; otherwise why not.
    pub fn refusal(&self, model: Option<&str>) -> Option<String> {
        let shown = model.unwrap_or("(none)");
        if let Some(model) = model
            && self.deny.iter().any(|g| g.is_match(model))
        {
            return Some(format!("model `{shown}` is denied"));
        }
        if !self.allow.is_empty()
            && !model.is_some_and(|m| self.allow.iter().any(|g| g.is_match(m)))
        {
            return Some(format!("model `{shown}` is not in the allowed list"));
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataAction {
    /// Refuse the request (provider-shaped 403 naming the rule and class).
    Block,
    /// Replace the finding with `[REDACTED:<class>]` and forward.
    Redact,
    /// Forward unchanged, and alert.
    Alert,
    /// Refuse, and block the identity's connects in the kernel for
    /// `quarantine_for`.
    Quarantine,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    /// An environment variable of the agent.
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding the key (first line).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A command that prints a (short-lived) token on stdout.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// How long a command's token is reused (default 5m).
    #[serde(default, with = "humantime_serde_opt")]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Which identity attribute the budget is kept per.
    #[serde(default = "rule_key")]
    pub per: BudgetKey,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub usd_per_day: Option<f64>,
}

fn rule_key() -> BudgetKey {
    BudgetKey::Rule
}

impl BudgetSpec {
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute,
            requests_per_day: self.requests_per_day,
            tokens_per_day: self.tokens_per_day,
            usd_per_day: self.usd_per_day,
        }
    }
}

/// `10m`, `1h30m`, `90s` for optional durations.
pub(crate) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        let Some(raw) = Option::<String>::deserialize(de)? else {
            return Ok(None);
        };
        humantime::parse_duration(&raw).map(Some).map_err(|err| {
            serde::de::Error::custom(format!(
                "`{raw}` is not a duration like 90s, 10m or 1h: {err}"
            ))
        })
    }
}
