//! The decision record: one JSON line per connection the kernel decided on.

use std::net::IpAddr;

use serde::Serialize;

use crate::{identity::Identity, policy::Action};

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
    /// `connect` (TCP connect) or `udp` (a QUIC attempt: sendmsg or UDP connect).
    pub event: &'static str,
    pub action: Action,
    /// The rule that decided, or `default`.
    pub rule: String,
    /// Which kernel level held the verdict: `process`, `cgroup` or `default`.
    pub decided_by: &'static str,
    #[serde(rename = "gen_ai.provider.name")]
    pub provider: String,
    pub api: Option<String>,
    pub destination: Destination,
    pub identity: Identity,
    pub policy_generation: u32,
}
