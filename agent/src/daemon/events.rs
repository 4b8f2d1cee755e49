//! The kernel's events, drained from the ring buffer: connects, execs,
//! DNS answers, first flights to unknown addresses.

use std::time::Instant;

use agent_common::{ConnectEvent, ExecEvent};
use aya::maps::{MapData, RingBuf};
use tracing::{debug, error, info, warn};

use super::{Agent, TICK, lookup::Who};
use crate::{
    bypass,
    catalog::sni,
    ebpf::{
        endpoints,
        events::{self, Event},
    },
    identity::{c_str, cmdline, procs::ProcInfo},
    record::{Decision, Named},
    usage,
};

impl Agent {
    /// Handles up to `budget` queued events; `true` if more are waiting.
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>, budget: usize) -> bool {
        let mut handled = 0;
        while handled < budget {
            let Some(item) = ring.next() else {
                break;
            };
            handled += 1;
            match events::decode(&item) {
                Ok(Event::Connect(ev)) => self.on_connect(&ev),
                Ok(Event::Exec(ev)) => self.on_exec(&ev),
                Ok(Event::Exit(ev)) => {
                    self.procs.on_exit(ev.header.tgid);
                    self.maps.forget_proc(ev.header.tgid);
                }
                Ok(Event::Dns(ev)) => self.on_dns(&ev),
                Ok(Event::Egress(ev)) => self.on_egress(&ev),
                Err(err) => {
                    self.decode_errors += 1;
                    warn!(error = %err, total = self.decode_errors, "undecodable event");
                }
            }
        }
        handled == budget
    }

    /// The kernel already put the answer's addresses in the endpoint map;
    /// here they get their TTL, and a name for the decision records.
    pub(super) fn on_dns(&mut self, ev: &agent_common::DnsEvent) {
        let Some(provider) = self.ids.provider_name(ev.provider).map(str::to_string) else {
            return;
        };
        let len = (ev.len as usize).min(ev.payload.len());
        let new = self
            .learned
            .absorb(&ev.payload[..len], &provider, Instant::now());
        if new.is_empty() {
            return;
        }
        debug!(%provider, addrs = %crate::fields::list(&new), "learned from DNS");
        // One key per new address and port, not a rebuild of the whole set:
        // answers can come by the thousand.
        let Some(entry) = self.catalog.provider(&provider) else {
            return;
        };
        let Ok(id) = self.ids.provider(&provider) else {
            return;
        };
        let value = endpoints::endpoint_value(id);
        for addr in &new {
            let host = self.learned.get(addr).map(|l| l.host.clone());
            for port in &entry.ports {
                let key = endpoints::endpoint_key(*addr, *port);
                self.endpoints.exact.entry(key).or_insert(value);
                if let Err(err) = self.maps.add_endpoint(key, value) {
                    error!("{}", crate::errors::chain(&err));
                }
            }
            if let Some(host) = &host {
                self.endpoints
                    .names
                    .entry(*addr)
                    .or_insert_with(|| host.clone());
            }
        }
    }

    /// A ClientHello to an address that is not a known endpoint, or a
    /// cleartext CONNECT: does it name a model API?
    pub(super) fn on_egress(&mut self, ev: &agent_common::EgressEvent) {
        let len = (ev.len as usize).min(ev.payload.len());
        let bytes = &ev.payload[..len];
        let (host, kind) = match ev.kind {
            // The name the kernel read covers a hello longer than the copy.
            agent_common::egress_kind::CLIENT_HELLO => (
                sni::client_hello_sni(bytes).or_else(|| {
                    let len = (ev.name_len as usize).min(ev.name.len());
                    sni::host_name(&ev.name[..len])
                }),
                "unknown-address",
            ),
            agent_common::egress_kind::HTTP_CONNECT => {
                (sni::connect_target(bytes), "proxy-connect")
            }
            agent_common::egress_kind::UNREADABLE => {
                self.on_unreadable(ev, bytes);
                return;
            }
            agent_common::egress_kind::HTTP_REQUEST => (
                sni::request_host(bytes).or_else(|| {
                    let len = (ev.name_len as usize).min(ev.name.len());
                    sni::host_name(&ev.name[..len])
                }),
                "unknown-address",
            ),
            _ => return,
        };
        let Some(host) = host else { return };
        let Some(provider) = self
            .catalog
            .providers
            .iter()
            .find(|p| p.hosts.iter().any(|h| h.matches(&host)))
            .map(|p| p.name.0.clone())
        else {
            return;
        };
        let ip = agent_common::from_v6_bytes(ev.addr);
        // The proxy's own listener: a redirected client's hello (the kernel
        // filters these by socket cookie; this is the belt to its braces).
        if ip.is_loopback() && ev.port == self.proxy_port {
            return;
        }
        let identity = self.identity_of(Who {
            tgid: ev.header.tgid,
            pid: ev.header.pid,
            uid: ev.uid,
            gid: ev.gid,
            comm: &ev.comm,
            cgroup_id: ev.cgroup_id,
        });
        if kind == "unknown-address"
            && self
                .learned
                .learn_from_sni(ip, ev.port, &provider, &host, Instant::now())
            && let Err(err) = self.sync_endpoints()
        {
            error!("{err:#}");
        }
        self.alerts.send(bypass::egress_alert(
            kind, &identity, &provider, &host, ip, ev.port,
        ));
    }

    /// First bytes the kernel held back: it could not read them, and the
    /// workload may not reach some provider directly.
    pub(super) fn on_unreadable(&mut self, ev: &agent_common::EgressEvent, bytes: &[u8]) {
        let ip = agent_common::from_v6_bytes(ev.addr);
        if ip.is_loopback() && ev.port == self.proxy_port {
            return;
        }
        let identity = self.identity_of(Who {
            tgid: ev.header.tgid,
            pid: ev.header.pid,
            uid: ev.uid,
            gid: ev.gid,
            comm: &ev.comm,
            cgroup_id: ev.cgroup_id,
        });
        // A whole hello the agent can read after all names the host.
        let host = sni::client_hello_sni(bytes);
        self.alerts.send(bypass::unreadable_alert(
            &identity,
            host.as_deref(),
            bytes.len(),
            ip,
            ev.port,
        ));
    }

    pub(super) fn on_exec(&mut self, ev: &ExecEvent) {
        let len = (ev.filename_len as usize).min(ev.filename.len());
        let filename = String::from_utf8_lossy(&ev.filename[..len]).into_owned();
        let argv_len = (ev.argv_len as usize).min(ev.argv.len());
        let args = cmdline::split_raw(&ev.argv[..argv_len]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmdline =
            (!refs.is_empty()).then(|| cmdline::mask_cmdline(&refs, cmdline::DEFAULT_MAX_LEN));
        self.procs.on_exec(ProcInfo {
            tgid: ev.header.tgid,
            ppid: None,
            uid: ev.uid,
            gid: ev.gid,
            comm: c_str(&ev.comm),
            exe: (!filename.is_empty()).then_some(filename),
            exe_facts: Default::default(),
            cmdline,
            cgroup_id: ev.cgroup_id,
            exited: None,
        });
        let exe_file = ev.exe;
        self.vet_exec(ev.header.tgid, &exe_file, ev.exe_status, &args);
        self.maps.forget_proc(ev.header.tgid);
        self.ensure_cgroup_known(ev.cgroup_id);
        if let Err(err) = self.refresh_proc_entry(ev.header.tgid) {
            error!("{err:#}");
        }
    }

    /// A cgroup we have not seen: created since the last walk. One that is
    /// still unknown after a walk (already removed) is not walked for again
    /// for a while, so an exec storm from it cannot make us walk per event.
    pub(super) fn ensure_cgroup_known(&mut self, id: u64) {
        if self.cgroups.get(id).is_some() {
            return;
        }
        let now = Instant::now();
        if self
            .unknown_cgroups
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < TICK)
        {
            return;
        }
        if self.unknown_cgroups.len() > 4096 {
            self.unknown_cgroups.clear();
        }
        let rescanned = self.cgroups.rescan();
        if self.cgroups.get(id).is_none() {
            self.unknown_cgroups.insert(id, now);
        }
        match rescanned {
            Ok(_) => {
                if let Err(err) = self.refresh_cgroup_entries() {
                    error!("{err:#}");
                }
            }
            Err(err) => warn!("{err:#}"),
        }
    }

    pub(super) fn on_connect(&mut self, ev: &ConnectEvent) {
        let identity = self.identity(ev);
        let ip = agent_common::from_v6_bytes(ev.addr);
        let provider = self
            .ids
            .provider_name(ev.provider)
            .unwrap_or("unknown")
            .to_string();
        let record = Decision::from_connect(
            ev,
            Named {
                identity,
                rule: self.rule_name(ev.rule),
                api: self.catalog.provider(&provider).map(|p| p.api.name()),
                provider,
                host: self.endpoints.names.get(&ip).cloned(),
            },
        );
        let state = self
            .shared_policy
            .read()
            .expect("policy lock poisoned")
            .clone();
        for alert in bypass::connect_alerts(&record, &state.policy, state.default_action()) {
            self.alerts.send(alert);
        }
        self.live
            .connect(&record.identity, &record.action.to_string());
        if let Some(row) = usage::Row::from_connection(&record) {
            self.usage.send(row);
        }
        if self.settings.log_decisions {
            log_decision(&record);
        }
        self.sink.send(record);
    }
}

/// One line per decision, with the identity record's fields flat, so the
/// journal (JSON) can be queried by any of them.
pub(super) fn log_decision(record: &Decision) {
    let id = &record.identity;
    info!(
        event = record.event.as_str(),
        action = %record.action,
        rule = %record.rule,
        decided_by = record.decided_by.as_str(),
        provider = %record.provider,
        ip = %record.destination.ip,
        port = record.destination.port,
        host = record.destination.host.as_deref().unwrap_or(""),
        pid = id.pid,
        tgid = id.tgid,
        uid = id.uid,
        user = id.user.as_deref().unwrap_or(""),
        comm = %id.comm,
        exe = id.exe.as_deref().unwrap_or(""),
        cmdline = id.cmdline.as_deref().unwrap_or(""),
        unit = id.cgroup_info.unit.as_deref().unwrap_or(""),
        container_id = id.cgroup_info.container_id.as_deref().unwrap_or(""),
        cgroup = id.cgroup.as_deref().unwrap_or(""),
        "decision"
    );
}
