//! The decision record: one JSON line per connection the kernel decided on.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

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

/// Converts CLOCK_BOOTTIME nanoseconds (what the kernel stamps) to wall time.
pub fn boot_ns_to_wall(boot_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0;
    let now = SystemTime::now();
    if !ok {
        return now;
    }
    let boot_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    now - Duration::from_nanos(boot_now.saturating_sub(boot_ns))
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before it).
/// Items for a log field, comma separated: `127.0.0.1, ::1`, not a Rust
/// debug form.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `ago` before now, in Unix-epoch milliseconds: the `--since` of the CLI.
pub fn ms_ago(ago: Duration) -> i64 {
    unix_ms(
        SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}
