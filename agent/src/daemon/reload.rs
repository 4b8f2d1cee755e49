//! Policy reloads (SIGHUP, file changes, the control socket) and the
//! control requests the loop answers.

use std::sync::Arc;

use anyhow::Result;
use tracing::{error, info, warn};

use super::{Agent, exec};
use crate::{
    alerts::{Alert, Severity},
    budget::Prices,
    catalog::Catalog,
    policy::{Policy, PolicyState, compile::Compiled},
    proxy::Control,
};

impl Agent {
    /// SIGHUP or a file change: load catalog, policy and prices again;
    /// keep the old ones on error, and say so in an alert.
    pub(super) fn reload(&mut self, trigger: &str) -> Result<(), String> {
        let loaded = Catalog::load(&self.settings.policies).and_then(|catalog| {
            let policy = Policy::load(&self.settings.policies, &catalog)?;
            Ok((catalog, policy))
        });
        let loaded = loaded.and_then(|(catalog, policy)| {
            let prices = Prices::load_dir(&self.settings.policies)?;
            Ok((catalog, policy, prices))
        });
        let (catalog, policy, prices) = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                error!(
                    trigger,
                    "reload refused, the previous policy stays in force:\n{errors}"
                );
                let mut alert = Alert::new(
                    "policy-invalid",
                    Severity::High,
                    format!(
                        "a policy change was refused; the previous policy stays in force: {errors}"
                    ),
                );
                alert.details.insert(
                    "errors".into(),
                    errors
                        .0
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .into(),
                );
                self.alerts.send(alert.with_id());
                return Err(errors.to_string());
            }
        };
        let mut policy = policy;
        exec::literal_digests(&mut policy, &mut self.digests);
        let state = Arc::new(PolicyState {
            policy: policy.clone(),
            prices,
            default_override: self.settings.default_action,
        });
        let compiled = match Compiled::new(policy, &catalog, &mut self.ids) {
            Ok(compiled) => compiled,
            Err(err) => {
                error!("reload refused, the previous policy stays in force: {err}");
                return Err(err.to_string());
            }
        };
        self.catalog = catalog;
        self.compiled = compiled;
        let catalog = &self.catalog;
        self.learned
            .retain_providers(|p| catalog.provider(p).is_some());
        // New requests decide with the new policy; those in flight keep the
        // Arc they started with.
        *self.shared_policy.write().expect("policy lock poisoned") = state;
        self.users.clear();
        let _ = self.hosts_tx.send(self.catalog.exact_hosts());
        if let Err(err) = self.sync_endpoints().and_then(|()| self.apply_policy()) {
            error!("applying the reloaded policy failed: {err:#}");
            return Err(format!(
                "applying the policy to the kernel maps failed: {err:#}"
            ));
        }
        self.policy_loaded();
        info!(
            version = %self.facts.policy_version,
            providers = self.catalog.providers.len(),
            rules = self.compiled.policy.rules.len(),
            generation = self.generation,
            default_action = %self.default_action(),
            trigger,
            "policy reloaded"
        );
        Ok(())
    }

    pub(super) fn control(&mut self, control: Control) {
        match control {
            Control::Quarantine { tgid, until, rule } => {
                info!(tgid, %rule, "quarantining a process's model access");
                self.quarantined.insert(tgid, (until, rule));
                if let Err(err) = self.apply_policy() {
                    error!("applying a quarantine failed: {err:#}");
                }
            }
        }
    }

    /// The write (with fsync) happens outside the lock, so the proxy's
    /// budget checks never wait on the disk.
    pub(super) fn save_budgets(&self) {
        let job = {
            let mut budgets = self.budgets.lock().expect("budget lock poisoned");
            budgets.prune(std::time::SystemTime::now());
            budgets.take_save()
        };
        if let Some(job) = job
            && let Err(err) = job.write()
        {
            self.budgets
                .lock()
                .expect("budget lock poisoned")
                .mark_unsaved();
            warn!(error = %err, "cannot save budget counters; they will restart from the last save");
        }
    }
}
