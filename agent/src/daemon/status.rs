//! The daemon's answers to the control API: status and reload.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use super::Agent;
use crate::{
    config::FailMode,
    control::{
        Request,
        status::{
            Attach, MapStatus, PolicyStatus, Program, ProxyStatus, Reloaded, SinkHealth, Status,
        },
    },
};

impl Agent {
    pub(super) fn answer(&mut self, request: Request) {
        match request {
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Reload { by, reply } => {
                let trigger = format!("the control socket ({by})");
                let result = self.reload(&trigger).map(|()| Reloaded {
                    version: self.facts.policy_version.clone(),
                    generation: self.generation,
                    providers: self.catalog.providers.len(),
                    rules: self.compiled.policy.rules.len(),
                });
                let _ = reply.send(result);
            }
        }
    }

    fn status(&self) -> Status {
        let facts = &self.facts;
        let missing = self
            .attachments
            .as_ref()
            .map(|a| a.missing())
            .unwrap_or_default();
        let mut programs: Vec<Program> = self
            .attachments
            .as_ref()
            .map(|a| a.names())
            .unwrap_or_default()
            .into_iter()
            .map(|name| Program {
                name: name.to_string(),
                attached: !missing.contains(&name),
                scope: Some("cgroup".into()),
            })
            .collect();
        if let Some(attachments) = &self.attachments {
            programs.extend(attachments.tracepoints().iter().map(|name| Program {
                name: name.to_string(),
                attached: true,
                scope: Some("host".into()),
            }));
        }
        let counters = self
            .maps
            .counters()
            .unwrap_or_default()
            .into_iter()
            .map(|(c, v)| (c.name().to_string(), v))
            .collect();
        let alerts = self.alerts.stats();
        let mut sinks = vec![
            SinkHealth {
                name: "events".into(),
                target: self.settings.events.clone(),
                delivered: Some(self.sink.written()),
                lost: self.sink.lost() + self.decode_errors,
                pending: self.sink.health.backlog.load(Ordering::Relaxed),
            },
            SinkHealth {
                name: "audit".into(),
                target: self
                    .settings
                    .proxy
                    .state_dir
                    .join(crate::audit::FILE_NAME)
                    .display()
                    .to_string(),
                delivered: Some(facts.audit_health.written.load(Ordering::Relaxed)),
                lost: facts.audit_dropped.load(Ordering::Relaxed)
                    + facts.audit_health.lost.load(Ordering::Relaxed),
                pending: facts.audit_health.backlog.load(Ordering::Relaxed),
            },
            SinkHealth {
                name: "usage".into(),
                target: crate::usage::path(&self.settings.proxy.state_dir)
                    .display()
                    .to_string(),
                delivered: Some(self.usage.written.load(Ordering::Relaxed)),
                lost: self.usage.dropped.load(Ordering::Relaxed)
                    + self.usage.failed.load(Ordering::Relaxed),
                pending: 0,
            },
            SinkHealth {
                name: "alerts".into(),
                target: "alert queue".into(),
                delivered: Some(alerts.received),
                lost: alerts.queue_full,
                pending: 0,
            },
        ];
        if let Some(otlp) = &facts.otlp {
            sinks.push(SinkHealth {
                name: "otlp".into(),
                target: otlp.endpoint.clone(),
                delivered: Some(otlp.exported()),
                lost: otlp.lost(),
                pending: 0,
            });
        }
        let mut alerts_pending = 0;
        for sink in &alerts.sinks {
            alerts_pending += sink.spool_depth;
            sinks.push(SinkHealth {
                name: format!("alerts/{}", sink.sink),
                target: if sink.target.is_empty() {
                    sink.sink.clone()
                } else {
                    sink.target.clone()
                },
                delivered: Some(sink.delivered),
                lost: sink.dropped,
                pending: sink.spool_depth,
            });
        }
        let uptime = SystemTime::now()
            .duration_since(facts.started)
            .unwrap_or_default();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started: crate::clock::rfc3339(facts.started),
            uptime_s: uptime.as_secs(),
            attach: Attach {
                cgroup: self.settings.cgroup.display().to_string(),
                programs,
                pins: self.settings.pin_dir.display().to_string(),
                fail_mode: match self.settings.fail_mode {
                    FailMode::Closed => "closed".into(),
                    FailMode::Open => {
                        format!("open after {}s", self.settings.fail_open_after.as_secs())
                    }
                },
            },
            policy: PolicyStatus {
                dir: self.settings.policies.display().to_string(),
                version: facts.policy_version.clone(),
                loaded: crate::clock::rfc3339(facts.policy_loaded),
                generation: self.generation,
                providers: self.catalog.providers.len(),
                rules: self.compiled.policy.rules.len(),
                default_action: self.default_action().to_string(),
                default_action_from: Some(
                    if self.settings.default_action.is_some() {
                        "override"
                    } else {
                        "policy"
                    }
                    .into(),
                ),
            },
            counters,
            maps: self
                .maps
                .sizes()
                .into_iter()
                .map(|m| MapStatus {
                    map: m.map.to_string(),
                    entries: m.entries,
                    capacity: m.capacity,
                })
                .collect(),
            proxy: ProxyStatus {
                listeners: facts.proxy_listeners.clone(),
                connections: facts.proxy_connections.load(Ordering::Relaxed),
            },
            metrics: facts.metrics_addr.to_string(),
            control: facts.control_socket.display().to_string(),
            sinks,
            alerts_pending,
            memory: crate::memory::now(),
            requests: self.metrics.request_totals(),
        }
    }

    /// Notes what a (re)load put in force.
    pub(super) fn policy_loaded(&mut self) {
        self.facts.policy_version = crate::policy::version(&self.settings.policies);
        self.facts.policy_loaded = SystemTime::now();
    }
}

/// What status reports that the daemon does not otherwise keep.
pub(super) struct Facts {
    pub started: SystemTime,
    pub policy_version: String,
    pub policy_loaded: SystemTime,
    pub proxy_listeners: Vec<String>,
    pub proxy_connections: Arc<AtomicU64>,
    pub metrics_addr: SocketAddr,
    pub control_socket: PathBuf,
    pub audit_dropped: Arc<AtomicU64>,
    pub audit_health: Arc<crate::jsonl::Health>,
    pub otlp: Option<crate::otlp::Health>,
}
