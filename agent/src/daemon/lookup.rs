//! Who a process is: the identity record for a connect or a redirected
//! connection, and what the proxy needs to know about it.

use agent_common::{ConnectEvent, Redirect};

use super::Agent;
use crate::{
    catalog::HostPattern,
    identity::{Identity, c_str},
    proxy::ConnInfo,
};

impl Agent {
    pub(super) fn identity(&mut self, ev: &ConnectEvent) -> Identity {
        self.identity_of(Who {
            tgid: ev.header.tgid,
            pid: ev.header.pid,
            uid: ev.uid,
            gid: ev.gid,
            comm: &ev.comm,
            cgroup_id: ev.cgroup_id,
        })
    }

    pub(super) fn identity_of(&mut self, who: Who<'_>) -> Identity {
        let tgid = who.tgid;
        let info = self.procs.lookup(tgid).cloned().unwrap_or_default();
        self.ensure_cgroup_known(who.cgroup_id);
        let cgroup = self.cgroups.get(who.cgroup_id).cloned();
        Identity {
            pid: who.pid,
            tgid,
            ppid: info.ppid,
            uid: who.uid,
            user: self.users.name(who.uid),
            gid: who.gid,
            group: self.users.group(who.gid),
            comm: c_str(who.comm),
            exe: info.exe,
            exe_facts: info.exe_facts,
            cmdline: info.cmdline,
            parents: self.procs.parents(info.ppid),
            cgroup: cgroup.as_ref().map(|c| c.path.clone()),
            cgroup_info: cgroup.map(|c| c.info).unwrap_or_default(),
        }
    }

    /// Everything the proxy needs to know about a redirected connection.
    pub(super) fn describe(&mut self, redirect: &Redirect) -> ConnInfo {
        let identity = self.identity_of(Who {
            tgid: redirect.tgid,
            pid: redirect.pid,
            uid: redirect.uid,
            gid: redirect.gid,
            comm: &redirect.comm,
            cgroup_id: redirect.cgroup_id,
        });
        let provider = self
            .ids
            .provider_name(redirect.provider)
            .unwrap_or("unknown")
            .to_string();
        let entry = self.catalog.provider(&provider);
        let ip = agent_common::from_v6_bytes(redirect.addr);
        let fallback_host = self.endpoints.names.get(&ip).cloned().or_else(|| {
            entry.and_then(|p| {
                p.hosts.iter().find_map(|h| match h {
                    HostPattern::Exact(name) => Some(name.clone()),
                    HostPattern::Suffix(_) => None,
                })
            })
        });
        ConnInfo {
            identity,
            api: entry.map(|p| p.api),
            hosts: entry.map(|p| p.hosts.clone()).unwrap_or_default(),
            fallback_host,
            rule: self.rule_name(redirect.rule),
            provider,
        }
    }

    pub(super) fn rule_name(&self, rule: u16) -> String {
        if rule == agent_common::RULE_DEFAULT {
            "default".to_string()
        } else {
            self.ids.rule_name(rule).unwrap_or("unknown").to_string()
        }
    }
}

/// What the kernel told us about a process at a connect.
pub(super) struct Who<'a> {
    pub(super) tgid: u32,
    pub(super) pid: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) comm: &'a [u8; 16],
    pub(super) cgroup_id: u64,
}
