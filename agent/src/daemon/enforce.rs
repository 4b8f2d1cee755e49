//! The policy carried into the kernel maps: global, per-cgroup and
//! per-process entries, endpoints, quarantines.

use std::time::Instant;

use anyhow::Result;
use tracing::{debug, error, info};

use super::Agent;
use crate::{
    config::FailMode,
    ebpf::{
        endpoints::{self, EndpointSet},
        maps::KernelConfig,
    },
    policy::{CgroupFacts, ProcFacts, compile::Compiled},
};

impl Agent {
    /// Writes config, global, per-cgroup and per-process entries for the
    /// current policy.
    pub(super) fn apply_policy(&mut self) -> Result<()> {
        self.generation = self.generation.wrapping_add(1);
        // Quarantines are per-process entries too.
        let has_proc_rules =
            self.compiled.policy.has_process_rules() || !self.quarantined.is_empty();
        let config = KernelConfig {
            default_action: self.default_action(),
            process_rules: has_proc_rules,
            suffix_labels: self.catalog.suffix_labels(),
            exe_rules: self.exe_rules_in_kernel(),
            generation: self.generation,
            proxy_port: self.proxy_port,
            fail_open_after: match self.settings.fail_mode {
                FailMode::Closed => None,
                FailMode::Open => Some(self.settings.fail_open_after),
            },
        };
        self.maps.set_config(config.to_abi())?;
        self.sync_exe_verdicts()?;
        self.refresh_cgroup_entries()?;
        if !has_proc_rules {
            for tgid in self.maps.proc_tgids() {
                self.maps.set_proc_entry(tgid, None)?;
            }
            return Ok(());
        }
        let mut tgids: Vec<u32> = self.procs.iter().map(|p| p.tgid).collect();
        tgids.extend(self.maps.proc_tgids());
        tgids.sort_unstable();
        tgids.dedup();
        let exe_rules = self.compiled.policy.has_exe_rules();
        for tgid in tgids {
            if exe_rules {
                self.vet_running(tgid);
            }
            self.refresh_proc_entry(tgid)?;
        }
        Ok(())
    }

    pub(super) fn refresh_cgroup_entries(&mut self) -> Result<()> {
        let global = self.compiled.global_entry();
        self.maps
            .set_cgroup_entry(0, Compiled::has_any_verdict(&global).then_some(global))?;
        let mut live = Vec::new();
        for (id, cgroup) in self.cgroups.iter() {
            let facts = cgroup_facts(&cgroup.path, &cgroup.info);
            let entry = self.compiled.entry(None, Some(&facts));
            live.push((id, (entry != global).then_some(entry)));
        }
        let known: Vec<u64> = live.iter().map(|(id, _)| *id).collect();
        for (id, entry) in live {
            self.maps.set_cgroup_entry(id, entry)?;
        }
        for id in self.maps.cgroup_ids() {
            if id != 0 && !known.contains(&id) {
                self.maps.set_cgroup_entry(id, None)?;
            }
        }
        Ok(())
    }

    /// A per-process entry only where the process's own facts change the
    /// verdict that its cgroup (or the global entry) would give.
    pub(super) fn refresh_proc_entry(&mut self, tgid: u32) -> Result<()> {
        if let Some((_, rule)) = self.quarantined.get(&tgid) {
            let entry = Compiled::quarantine_entry(self.ids.rule(rule)?);
            return Ok(self.maps.set_proc_entry(tgid, Some(entry))?);
        }
        if !self.compiled.policy.has_process_rules() {
            return Ok(());
        }
        let Some(info) = self.procs.lookup(tgid).cloned() else {
            // Gone: the kernel removed its entry on exit.
            self.maps.forget_proc(tgid);
            return Ok(());
        };
        let user = self.users.name(info.uid);
        let group = self.users.group(info.gid);
        let proc_facts = ProcFacts {
            exe: info.exe.as_deref(),
            exe_sha256: info.exe_facts.exe_sha256.as_deref(),
            anonymous_exec: info.exe_facts.anonymous_exec,
            comm: &info.comm,
            uid: info.uid,
            user: user.as_deref(),
            gid: info.gid,
            group: group.as_deref(),
        };
        let cgroup = self.cgroups.get(info.cgroup_id);
        let cgroup_facts = cgroup.map(|c| cgroup_facts(&c.path, &c.info));
        let full = self
            .compiled
            .entry(Some(&proc_facts), cgroup_facts.as_ref());
        let base = self.compiled.entry(None, cgroup_facts.as_ref());
        Ok(self
            .maps
            .set_proc_entry(tgid, (full != base).then_some(full))?)
    }

    pub(super) fn sync_endpoints(&mut self) -> Result<()> {
        self.resolved.retain_hosts(&self.catalog.exact_hosts());
        let set = EndpointSet::build(&self.catalog, &self.resolved, &self.learned, &mut self.ids)?;
        let dns_names = endpoints::dns_names(&self.catalog, &mut self.ids)?;
        self.maps.sync_dns_names(&dns_names)?;
        if set.conflicts > 0 {
            debug!(
                conflicts = set.conflicts,
                "addresses shared by several providers; the first in catalog order keeps them"
            );
        }
        let stats = self.maps.sync_endpoints(&set)?;
        if stats.added + stats.removed > 0 {
            info!(
                added = stats.added,
                removed = stats.removed,
                total = self.maps.endpoint_count(),
                "endpoint maps updated"
            );
        }
        self.endpoints = set;
        Ok(())
    }

    pub(super) fn expire_quarantines(&mut self) {
        let now = Instant::now();
        let expired: Vec<u32> = self
            .quarantined
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(tgid, _)| *tgid)
            .collect();
        if expired.is_empty() {
            return;
        }
        for tgid in &expired {
            self.quarantined.remove(tgid);
            info!(tgid, "quarantine over");
            if let Err(err) = self.maps.set_proc_entry(*tgid, None) {
                error!("{}", crate::errors::chain(&err));
            }
        }
        if let Err(err) = self.apply_policy() {
            error!("{err:#}");
        }
    }
}

pub(super) fn cgroup_facts<'a>(
    path: &'a str,
    info: &'a crate::identity::cgroup_path::CgroupInfo,
) -> CgroupFacts<'a> {
    CgroupFacts {
        path,
        unit: info.unit.as_deref(),
        container_id: info.container_id.as_deref(),
        runtime: info.container_runtime,
        pod_uid: info.pod_uid.as_deref(),
    }
}
