//! modelgate: finds, attributes and governs every connection to a model API
//! on this host.
//!
//! A library as well as the `modelgate` binary so that the fuzz targets in
//! `fuzz/` (and benchmarks) can drive the parsers of untrusted input
//! directly; `main.rs` only calls `cli`.

pub mod alerts;
pub mod audit;
pub mod budget;
pub mod bypass;
pub mod catalog;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod ebpf;
pub mod errors;
pub mod fields;
pub mod heartbeat;
pub mod identity;
pub mod inspect;
pub mod jsonl;
#[path = "../../packaging/layout.rs"]
#[allow(
    dead_code,
    reason = "shared with the xtask, which alone uses the Debian control fields"
)]
mod layout;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod otlp;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod record;
pub mod sink;
pub mod trust;
pub mod usage;
pub mod yaml;

#[cfg(test)]
mod layering_tests;
#[cfg(test)]
mod log_field_tests;
