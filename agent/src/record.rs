//! The decision record: one JSON line per connection the kernel decided on.

use std::net::IpAddr;

use agent_common::{ConnectEvent, hook, source};
use serde::Serialize;

use crate::{identity::Identity, policy::Action};

/// What the kernel saw: a TCP connect, or a UDP datagram or connect (a
/// QUIC attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Connect,
    Udp,
}

/// Which kernel level held the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecidedBy {
    Process,
    Cgroup,
    /// No agent was beating: the kernel let it through (`fail_mode: open`).
    FailOpen,
    Default,
}

#[derive(Debug, Serialize)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub time: String,
    pub event: Event,
    pub action: Action,
    /// The rule that decided, or `default`.
    pub rule: String,
    pub decided_by: DecidedBy,
    #[serde(rename = "gen_ai.provider.name")]
    pub provider: String,
    pub api: Option<String>,
    pub destination: Destination,
    pub identity: Identity,
    pub policy_generation: u32,
}

/// What the agent adds to a connect event: who, and the names behind the
/// event's ids.
pub struct Named {
    pub identity: Identity,
    pub rule: String,
    pub provider: String,
    pub api: Option<&'static str>,
    pub host: Option<String>,
}

impl Decision {
    pub fn from_connect(ev: &ConnectEvent, named: Named) -> Decision {
        Decision {
            time: crate::clock::rfc3339(crate::clock::boot_ns_to_wall(ev.header.boot_ns)),
            event: if ev.protocol == 17 || ev.hook == hook::SENDMSG {
                Event::Udp
            } else {
                Event::Connect
            },
            // An action the agent does not know is the kernel refusing.
            action: Action::from_kernel(ev.action).unwrap_or(Action::Block),
            rule: named.rule,
            decided_by: match ev.source {
                source::PROCESS => DecidedBy::Process,
                source::CGROUP => DecidedBy::Cgroup,
                source::FAIL_OPEN => DecidedBy::FailOpen,
                _ => DecidedBy::Default,
            },
            provider: named.provider,
            api: named.api.map(str::to_string),
            destination: Destination {
                ip: agent_common::from_v6_bytes(ev.addr),
                port: ev.port,
                host: named.host,
            },
            identity: named.identity,
            policy_generation: ev.generation,
        }
    }
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Udp => "udp",
        }
    }
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Process => "process",
            DecidedBy::Cgroup => "cgroup",
            DecidedBy::FailOpen => "fail-open",
            DecidedBy::Default => "default",
        }
    }
}
