//! Bypass findings the daemon raises from what it sees: QUIC attempts,
//! connections that reached an endpoint without the policy's enforcement,
//! gaps in enforcement, and programs detached by someone else.

use std::time::SystemTime;

use serde_json::json;

use crate::{
    alerts::{Alert, Severity},
    heartbeat::Gap,
    identity::Identity,
    policy::{Action, CgroupFacts, Policy, ProcFacts, decide},
    record::{Decision, Event},
};

/// Facts for rule matching, from an identity record.
pub fn facts(id: &Identity) -> (ProcFacts<'_>, CgroupFacts<'_>) {
    (
        ProcFacts {
            exe: id.exe.as_deref(),
            exe_sha256: id.exe_facts.exe_sha256.as_deref(),
            anonymous_exec: id.exe_facts.anonymous_exec,
            comm: &id.comm,
            uid: id.uid,
            user: id.user.as_deref(),
            gid: id.gid,
            group: id.group.as_deref(),
        },
        CgroupFacts {
            path: id.cgroup.as_deref().unwrap_or("/"),
            unit: id.cgroup_info.unit.as_deref(),
            container_id: id.cgroup_info.container_id.as_deref(),
            runtime: id.cgroup_info.container_runtime,
            pod_uid: id.cgroup_info.pod_uid.as_deref(),
        },
    )
}

fn about(mut alert: Alert, record: &Decision) -> Alert {
    alert.provider = Some(record.provider.clone());
    alert.host = record.destination.host.clone();
    alert.identity = Some(record.identity.clone());
    alert.details.insert(
        "destination".into(),
        json!({"ip": record.destination.ip, "port": record.destination.port}),
    );
    alert.with_id()
}

/// Alerts a kernel decision calls for.
pub fn connect_alerts(record: &Decision, policy: &Policy, default: Action) -> Vec<Alert> {
    let who = record.identity.who().to_string();
    let mut alerts = Vec::new();
    if record.event == Event::Udp {
        let verdict = if record.action == Action::Allow || record.action == Action::Monitor {
            "let through"
        } else {
            "refused; the client should fall back to TCP"
        };
        let mut alert = Alert::new(
            "quic-attempt",
            Severity::Warning,
            format!(
                "{who} (pid {}) sent QUIC to {} ({verdict})",
                record.identity.tgid, record.provider
            ),
        );
        alert.rule = Some(record.rule.clone());
        alerts.push(about(alert, record));
        return alerts;
    }
    // The kernel let it through, but the policy as it stands says it must
    // be blocked or go through the proxy: a process exec'd an instant ago,
    // a cgroup not yet seen, or state changed under us.
    if matches!(record.action, Action::Allow | Action::Monitor) {
        let (proc, cgroup) = facts(&record.identity);
        let (expected, rule) =
            decide::connect_action(policy, default, &proc, &cgroup, &record.provider);
        if !matches!(expected, Action::Allow | Action::Monitor) {
            let mut alert = Alert::new(
                "direct-connection",
                Severity::High,
                format!(
                    "{who} (pid {}) reached {} directly; policy rule `{rule}` says {expected}",
                    record.identity.tgid, record.provider
                ),
            );
            alert.rule = Some(rule);
            alert
                .details
                .insert("kernel_action".into(), json!(record.action));
            alerts.push(about(alert, record));
        }
    }
    alerts
}

/// A model API reached around the catalog's addresses: a ClientHello naming
/// it on an address nobody told us about (`unknown-address`; the address
/// is now learned), or a CONNECT to it through an HTTP proxy
/// (`proxy-connect`).
pub fn egress_alert(
    kind: &'static str,
    identity: &Identity,
    provider: &str,
    host: &str,
    ip: std::net::IpAddr,
    port: u16,
) -> Alert {
    let who = identity.who();
    let message = if kind == "proxy-connect" {
        format!(
            "{who} (pid {}) asked the HTTP proxy {ip}:{port} to CONNECT to {host} ({provider}): the proxy hides the destination from connect()-time policy",
            identity.tgid
        )
    } else {
        format!(
            "{who} (pid {}) reached {host} ({provider}) at {ip}:{port}, an address not in the catalog or DNS answers; it is now learned and governed",
            identity.tgid
        )
    };
    let mut alert = Alert::new(kind, Severity::High, message);
    alert.provider = Some(provider.to_string());
    alert.host = Some(host.to_string());
    alert.identity = Some(identity.clone());
    alert
        .details
        .insert("destination".into(), json!({"ip": ip, "port": port}));
    alert.with_id()
}

/// First bytes to an unknown address on a catalog port that the kernel
/// could not judge and held back (`egress_kind::UNREADABLE`).
pub fn unreadable_alert(
    identity: &Identity,
    host: Option<&str>,
    bytes: usize,
    ip: std::net::IpAddr,
    port: u16,
) -> Alert {
    let who = identity.who();
    let message = format!(
        "{who} (pid {}) sent {bytes} first bytes to {ip}:{port}, a model API port at an address not in the catalog, that the kernel could not read (a ClientHello split across writes or cut short, past the parser's bounds, or not TLS); its policy keeps it from some model API, so they were held back until they can be read whole",
        identity.tgid
    );
    let mut alert = Alert::new("unreadable-first-bytes", Severity::High, message);
    alert.host = host.map(str::to_string);
    alert.identity = Some(identity.clone());
    alert
        .details
        .insert("destination".into(), json!({"ip": ip, "port": port}));
    alert.with_id()
}

/// A governed process runs a memfd or a deleted file: nothing on disk
/// names what it runs, the classic way to run a binary no path rule knows.
pub fn anonymous_exec_alert(identity: &Identity) -> Alert {
    let who = identity.who();
    let digest = identity
        .exe_facts
        .exe_sha256
        .as_deref()
        .map_or("unknown".to_string(), |d| d[..16].to_string());
    let mut alert = Alert::new(
        "anonymous-exec",
        Severity::High,
        format!(
            "{who} (pid {}) runs from a memfd or a deleted file (sha256 {digest}…); \
             `anonymous_exec: true` in a rule governs such processes",
            identity.tgid
        ),
    );
    alert.identity = Some(identity.clone());
    alert.with_id()
}

/// `kernel`: what the pinned programs did while no agent ran — `None`
/// when nothing was pinned (nothing was enforced), else the previous
/// agent's `fail_open_after` in seconds (0: fail closed, enforcing all
/// along).
pub fn gap_alert(gap: &Gap, kernel: Option<u16>) -> Alert {
    let seconds = gap
        .started
        .duration_since(gap.stopped)
        .unwrap_or_default()
        .as_secs_f64();
    let how = if gap.clean {
        "was stopped"
    } else {
        "stopped without a clean shutdown"
    };
    let mut alert = Alert::new(
        "enforcement-gap",
        if gap.clean {
            Severity::Warning
        } else {
            Severity::High
        },
        match kernel {
            None => format!(
                "the agent {how} at {} and enforced again at {} ({seconds:.0} s without \
                 enforcement)",
                crate::clock::rfc3339(gap.stopped),
                crate::clock::rfc3339(gap.started)
            ),
            Some(0) => format!(
                "the agent {how} at {} and was back at {} ({seconds:.0} s); its pinned programs \
                 kept enforcing the last policy meanwhile (fail_mode closed: redirected calls \
                 failed), and what they decided is recorded from the kernel's queue",
                crate::clock::rfc3339(gap.stopped),
                crate::clock::rfc3339(gap.started)
            ),
            Some(after) => format!(
                "the agent {how} at {} and was back at {} ({seconds:.0} s); its pinned programs \
                 enforced the last policy for {after} s, then only monitored (fail_mode open): \
                 calls made after that went out ungoverned and are recorded from the kernel's \
                 queue",
                crate::clock::rfc3339(gap.stopped),
                crate::clock::rfc3339(gap.started)
            ),
        },
    );
    alert
        .details
        .insert("kernel_enforcing".into(), json!(kernel.is_some()));
    if let Some(after) = kernel {
        let mode = if after == 0 { "closed" } else { "open" };
        alert.details.insert("fail_mode".into(), json!(mode));
    }
    alert.details.insert(
        "stopped_at".into(),
        json!(crate::clock::rfc3339(gap.stopped)),
    );
    alert.details.insert(
        "started_at".into(),
        json!(crate::clock::rfc3339(gap.started)),
    );
    alert.details.insert("gap_seconds".into(), json!(seconds));
    alert.details.insert("clean_stop".into(), json!(gap.clean));
    alert.with_id()
}

pub fn tamper_alert(missing: &[&str], cgroup: &str) -> Alert {
    let mut alert = Alert::new(
        "agent-tamper",
        Severity::Critical,
        format!(
            "modelgate's programs {} are no longer attached to {cgroup}: someone detached them; \
             model traffic there is not governed until the agent restarts",
            missing.join(", ")
        ),
    );
    alert.details.insert("programs".into(), json!(missing));
    alert.details.insert("cgroup".into(), json!(cgroup));
    alert.details.insert(
        "checked_at".into(),
        json!(crate::clock::rfc3339(SystemTime::now())),
    );
    alert.with_id()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        catalog::Catalog,
        record::{DecidedBy, Destination},
    };

    fn record(action: Action, event: Event, exe: &str) -> Decision {
        Decision {
            time: String::new(),
            event,
            action,
            rule: "default".into(),
            decided_by: DecidedBy::Default,
            provider: "openai".into(),
            api: None,
            destination: Destination {
                ip: "127.0.0.9".parse::<IpAddr>().unwrap(),
                port: 443,
                host: None,
            },
            identity: Identity {
                tgid: 42,
                exe: Some(exe.into()),
                comm: "python3".into(),
                ..Default::default()
            },
            policy_generation: 1,
        }
    }

    fn policy() -> Policy {
        let catalog = Catalog::parse(
            "e.yaml",
            "providers:\n  - name: openai\n    api: openai\n    hosts: [api.openai.com]\n",
        )
        .unwrap();
        Policy::parse(
            "p.yaml",
            "rules:\n  - name: no-python\n    match:\n      exe: [\"/usr/bin/python3*\"]\n    action: block\n",
            &catalog,
        )
        .unwrap()
    }

    #[test]
    fn a_connect_the_policy_would_block_is_a_direct_connection() {
        let alerts = connect_alerts(
            &record(Action::Monitor, Event::Connect, "/usr/bin/python3.11"),
            &policy(),
            Action::Monitor,
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "direct-connection");
        assert_eq!(alerts[0].rule.as_deref(), Some("no-python"));
        // The same connect by a process the policy allows: nothing.
        let alerts = connect_alerts(
            &record(Action::Monitor, Event::Connect, "/usr/bin/curl"),
            &policy(),
            Action::Monitor,
        );
        assert!(alerts.is_empty());
        // Blocked by the kernel as the policy says: nothing either.
        let alerts = connect_alerts(
            &record(Action::Block, Event::Connect, "/usr/bin/python3.11"),
            &policy(),
            Action::Monitor,
        );
        assert!(alerts.is_empty());
    }

    #[test]
    fn udp_is_a_quic_attempt() {
        let alerts = connect_alerts(
            &record(Action::Block, Event::Udp, "/usr/bin/curl"),
            &policy(),
            Action::Monitor,
        );
        assert_eq!(alerts[0].kind, "quic-attempt");
    }
}
