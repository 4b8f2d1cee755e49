//! Typed access to the kernel maps, kept in sync by diffing against what
//! the agent last wrote (the agent is the maps' only writer).

use std::collections::HashMap;

use agent_common::{
    AgentConfig, CidrKey, Counter, DnsName, EndpointKey, EndpointValue, ExeKey, ExeVerdict,
    PolicyEntry, names, port_flags,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
};

use super::{
    endpoints::EndpointSet,
    error::{Access, MapsError, OnMap},
};

pub type Result<T, E = MapsError> = std::result::Result<T, E>;

pub struct KernelMaps {
    ports: Array<MapData, u8>,
    endpoints: BpfHashMap<MapData, EndpointKey, EndpointValue>,
    cidrs: LpmTrie<MapData, CidrKey, EndpointValue>,
    cgroup_policy: BpfHashMap<MapData, u64, PolicyEntry>,
    proc_policy: BpfHashMap<MapData, u32, PolicyEntry>,
    config: Array<MapData, AgentConfig>,
    counters: PerCpuArray<MapData, u64>,
    dns_names: BpfHashMap<MapData, u64, DnsName>,
    heartbeat: Array<MapData, u64>,
    exe_policy: BpfHashMap<MapData, ExeKey, ExeVerdict>,
    exe_special: Array<MapData, ExeVerdict>,
    exe_sizes: BpfHashMap<MapData, i64, u32>,
    installed_dns: HashMap<u64, DnsName>,
    installed: EndpointSet,
    installed_ports: HashMap<u16, u8>,
    cgroup_entries: HashMap<u64, PolicyEntry>,
    proc_entries: HashMap<u32, PolicyEntry>,
}

pub fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| MapsError::Missing(name.to_string()))?;
    T::try_from(map).map_err(|source| MapsError::WrongType {
        name: name.to_string(),
        source,
    })
}

impl KernelMaps {
    /// Takes the maps out of the object; returns the event ring buffer too.
    pub fn take(ebpf: &mut Ebpf) -> Result<(KernelMaps, RingBuf<MapData>)> {
        let maps = KernelMaps {
            ports: take(ebpf, names::MAP_PORTS)?,
            endpoints: take(ebpf, names::MAP_ENDPOINTS)?,
            cidrs: take(ebpf, names::MAP_CIDRS)?,
            cgroup_policy: take(ebpf, names::MAP_CGROUP_POLICY)?,
            proc_policy: take(ebpf, names::MAP_PROC_POLICY)?,
            config: take(ebpf, names::MAP_CONFIG)?,
            counters: take(ebpf, names::MAP_COUNTERS)?,
            dns_names: take(ebpf, names::MAP_DNS_NAMES)?,
            heartbeat: take(ebpf, names::MAP_HEARTBEAT)?,
            exe_policy: take(ebpf, names::MAP_EXE_POLICY)?,
            exe_special: take(ebpf, names::MAP_EXE_SPECIAL)?,
            exe_sizes: take(ebpf, names::MAP_EXE_SIZES)?,
            installed_dns: HashMap::new(),
            installed: EndpointSet::default(),
            installed_ports: HashMap::new(),
            cgroup_entries: HashMap::new(),
            proc_entries: HashMap::new(),
        };
        let events = take(ebpf, names::MAP_EVENTS)?;
        Ok((maps, events))
    }

    /// Takes what a previous agent left in the pinned maps as installed,
    /// so the next sync removes what this policy no longer wants. Returns
    /// the configuration the kernel ran with meanwhile, if there was one.
    pub fn adopt(&mut self) -> Result<Option<AgentConfig>> {
        for entry in self.endpoints.iter() {
            let (key, value) = entry.on(Access::Read, "MG_ENDPOINTS")?;
            self.installed.exact.insert(key, value);
        }
        for entry in self.cidrs.iter() {
            let (key, value) = entry.on(Access::Read, "MG_CIDRS")?;
            self.installed
                .cidrs
                .insert((key.prefix_len(), key.data()), value);
        }
        for port in 0..=u16::MAX {
            let flags = self
                .ports
                .get(&u32::from(port), 0)
                .on(Access::Read, "MG_PORTS")?;
            if flags != 0 {
                self.installed_ports.insert(port, flags);
            }
        }
        for entry in self.cgroup_policy.iter() {
            let (id, policy) = entry.on(Access::Read, "MG_CGROUP_POLICY")?;
            self.cgroup_entries.insert(id, policy);
        }
        for entry in self.dns_names.iter() {
            let (hash, name) = entry.on(Access::Read, "MG_DNS_NAMES")?;
            self.installed_dns.insert(hash, name);
        }
        let config = self.config.get(&0, 0).on(Access::Read, "MG_CONFIG")?;
        // An all-zero config is a map no agent configured yet.
        Ok((config.generation != 0).then_some(config))
    }

    /// Stamps MG_HEARTBEAT with CLOCK_BOOTTIME, the clock the programs read.
    pub fn beat(&mut self) -> Result<()> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid clock id and out pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
            return Err(MapsError::Clock(std::io::Error::last_os_error()));
        }
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        self.heartbeat
            .set(0, now, 0)
            .on(Access::Write, "MG_HEARTBEAT")
    }

    pub fn set_config(&mut self, config: AgentConfig) -> Result<()> {
        self.config.set(0, config, 0).on(Access::Write, "MG_CONFIG")
    }

    /// Makes the kernel's endpoint maps equal `wanted`. Additions go in
    /// before the port flags that make them reachable; removals after.
    pub fn sync_endpoints(&mut self, wanted: &EndpointSet) -> Result<SyncStats> {
        let mut stats = SyncStats::default();
        for (key, value) in &wanted.exact {
            if self.installed.exact.get(key) != Some(value) {
                self.endpoints
                    .insert(key, value, 0)
                    .on(Access::Insert, "MG_ENDPOINTS")?;
                stats.added += 1;
            }
        }
        for ((prefix, key), value) in &wanted.cidrs {
            if self.installed.cidrs.get(&(*prefix, *key)) != Some(value) {
                self.cidrs
                    .insert(&Key::new(*prefix, *key), value, 0)
                    .on(Access::Insert, "MG_CIDRS")?;
                stats.added += 1;
            }
        }
        let wanted_ports = wanted.port_flags();
        for (port, flags) in &wanted_ports {
            if self.installed_ports.get(port) != Some(flags) {
                self.ports
                    .set(u32::from(*port), *flags, 0)
                    .on(Access::Write, "MG_PORTS")?;
            }
        }
        for port in self.installed_ports.keys() {
            if !wanted_ports.contains_key(port) {
                self.ports
                    .set(u32::from(*port), 0u8, 0)
                    .on(Access::Write, "MG_PORTS")?;
            }
        }
        for key in self.installed.exact.keys() {
            if !wanted.exact.contains_key(key) {
                // Already gone is fine: the goal is absence.
                let _ = self.endpoints.remove(key);
                stats.removed += 1;
            }
        }
        for (prefix, key) in self.installed.cidrs.keys() {
            if !wanted.cidrs.contains_key(&(*prefix, *key)) {
                let _ = self.cidrs.remove(&Key::new(*prefix, *key));
                stats.removed += 1;
            }
        }
        self.installed = wanted.clone();
        self.installed_ports = wanted_ports;
        Ok(stats)
    }

    /// Adds one exact endpoint without rebuilding the set: what a DNS
    /// answer brings (the kernel usually inserted it already; inserting
    /// again is harmless and covers an answer whose event came late).
    pub fn add_endpoint(&mut self, key: EndpointKey, value: EndpointValue) -> Result<()> {
        if self.installed.exact.get(&key) == Some(&value) {
            return Ok(());
        }
        self.endpoints
            .insert(key, value, 0)
            .on(Access::Insert, "MG_ENDPOINTS")?;
        self.installed.exact.insert(key, value);
        Ok(())
    }

    /// Removes endpoints the kernel holds that the agent never heard of:
    /// DNS answers whose ring-buffer event was lost (the kernel inserts
    /// before it reports). Returns how many went.
    pub fn remove_unknown_endpoints(&mut self) -> usize {
        let unknown: Vec<EndpointKey> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !self.installed.exact.contains_key(key))
            .collect();
        for key in &unknown {
            let _ = self.endpoints.remove(key);
        }
        unknown.len()
    }

    /// Makes the kernel's DNS name table equal `wanted`.
    pub fn sync_dns_names(&mut self, wanted: &HashMap<u64, DnsName>) -> Result<()> {
        for (hash, entry) in wanted {
            if self.installed_dns.get(hash) != Some(entry) {
                self.dns_names
                    .insert(hash, entry, 0)
                    .on(Access::Insert, "MG_DNS_NAMES")?;
            }
        }
        for hash in self.installed_dns.keys() {
            if !wanted.contains_key(hash) {
                let _ = self.dns_names.remove(hash);
            }
        }
        self.installed_dns = wanted.clone();
        Ok(())
    }

    /// Writes (or, with None, removes) the policy entry of one cgroup.
    pub fn set_cgroup_entry(&mut self, id: u64, entry: Option<PolicyEntry>) -> Result<()> {
        match entry {
            Some(entry) if self.cgroup_entries.get(&id) != Some(&entry) => {
                self.cgroup_policy
                    .insert(id, entry, 0)
                    .on(Access::Insert, "MG_CGROUP_POLICY")?;
                self.cgroup_entries.insert(id, entry);
            }
            Some(_) => {}
            None => {
                if self.cgroup_entries.remove(&id).is_some() {
                    let _ = self.cgroup_policy.remove(&id);
                }
            }
        }
        Ok(())
    }

    pub fn cgroup_ids(&self) -> Vec<u64> {
        self.cgroup_entries.keys().copied().collect()
    }

    pub fn set_proc_entry(&mut self, tgid: u32, entry: Option<PolicyEntry>) -> Result<()> {
        match entry {
            Some(entry) => {
                // The kernel deletes entries on exec and exit, so our copy may
                // be stale: always write.
                self.proc_policy
                    .insert(tgid, entry, 0)
                    .on(Access::Insert, "MG_PROC_POLICY")?;
                self.proc_entries.insert(tgid, entry);
            }
            None => {
                self.proc_entries.remove(&tgid);
                // The kernel may hold one we did not write (a forked child's).
                let _ = self.proc_policy.remove(&tgid);
            }
        }
        Ok(())
    }

    /// What the exec hook gives a process running this file.
    pub fn set_exe_verdict(&mut self, key: ExeKey, verdict: &ExeVerdict) -> Result<()> {
        // LRU: a full map evicts the least recently used file, which is
        // then vetted again at its next exec.
        self.exe_policy
            .insert(key, verdict, 0)
            .on(Access::Write, "MG_EXE_POLICY")
    }

    /// Forgets every vetted file (a new policy changes their verdicts).
    pub fn clear_exe_verdicts(&mut self) {
        let keys: Vec<ExeKey> = self.exe_policy.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.exe_policy.remove(&key);
        }
    }

    /// Makes `MG_EXE_SIZES` hold exactly `sizes`.
    pub fn set_exe_sizes(&mut self, sizes: &std::collections::HashSet<i64>) -> Result<()> {
        let old: Vec<i64> = self.exe_sizes.keys().filter_map(Result::ok).collect();
        for size in old.iter().filter(|s| !sizes.contains(s)) {
            let _ = self.exe_sizes.remove(size);
        }
        for size in sizes {
            self.exe_sizes
                .insert(size, 1, 0)
                .on(Access::Insert, "MG_EXE_SIZES")?;
        }
        Ok(())
    }

    pub fn set_exe_special(&mut self, slot: u32, verdict: ExeVerdict) -> Result<()> {
        self.exe_special
            .set(slot, verdict, 0)
            .on(Access::Write, "MG_EXE_SPECIAL")
    }

    /// The kernel removed this process's entry (exec or exit).
    pub fn forget_proc(&mut self, tgid: u32) {
        self.proc_entries.remove(&tgid);
    }

    /// Every process with an entry: ours, and the ones the kernel copied to
    /// forked children on its own.
    pub fn proc_tgids(&self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self.proc_entries.keys().copied().collect();
        tgids.extend(self.proc_policy.keys().filter_map(Result::ok));
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }

    /// Sums of the per-CPU counters, in `Counter::ALL` order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|c| {
                let values = self
                    .counters
                    .get(&(*c as u32), 0)
                    .on(Access::Read, "MG_COUNTERS")?;
                Ok((*c, values.iter().sum()))
            })
            .collect()
    }

    /// Entries and capacity of the maps the agent fills: a map near its
    /// capacity refuses new entries, which is worth an alert before it does.
    pub fn sizes(&self) -> Vec<MapSize> {
        use agent_common::limits;
        vec![
            MapSize::new(
                "endpoints",
                self.installed.exact.len(),
                limits::MAX_ENDPOINTS,
            ),
            MapSize::new("cidrs", self.installed.cidrs.len(), limits::MAX_CIDRS),
            MapSize::new(
                "cgroup_policy",
                self.cgroup_entries.len(),
                limits::MAX_CGROUPS,
            ),
            // The kernel adds entries (forked children), so count its keys;
            // the map only holds processes that rules name.
            MapSize::new(
                "proc_policy",
                self.proc_policy.keys().filter(Result::is_ok).count(),
                limits::MAX_PROCS,
            ),
            MapSize::new("dns_names", self.installed_dns.len(), limits::DNS_NAMES),
        ]
    }

    pub fn endpoint_count(&self) -> usize {
        self.installed.exact.len() + self.installed.cidrs.len()
    }
}

/// What `MG_CONFIG` tells the programs, in the agent's terms.
pub struct KernelConfig {
    pub default_action: crate::policy::Action,
    /// Some process has a per-process entry to look up.
    pub process_rules: bool,
    /// Labels the kernel strips to match `*.suffix` names.
    pub suffix_labels: u8,
    /// The exec hook decides verdicts from executables.
    pub exe_rules: bool,
    pub generation: u32,
    pub proxy_port: u16,
    /// How long the programs wait for a heartbeat before they only
    /// monitor (`fail_mode: open`); `None` keeps enforcing.
    pub fail_open_after: Option<std::time::Duration>,
}

impl KernelConfig {
    pub fn to_abi(&self) -> AgentConfig {
        AgentConfig {
            default_action: self.default_action.to_kernel(),
            has_proc_rules: u8::from(self.process_rules),
            suffix_labels: self.suffix_labels,
            exe_rules: u8::from(self.exe_rules),
            generation: self.generation,
            proxy_port: self.proxy_port,
            fail_open_after_s: self.fail_open_after.map_or(0, |after| {
                u16::try_from(after.as_secs()).unwrap_or(u16::MAX)
            }),
            // The programs exempt the agent's own sockets by this.
            agent_tgid: std::process::id(),
        }
    }
}

/// What the daemon does with the kernel maps: [`KernelMaps`] in the agent,
/// an in-memory fake in the daemon's unit tests (which run without a
/// kernel).
pub trait Maps: Send {
    fn beat(&mut self) -> Result<()>;
    fn set_config(&mut self, config: AgentConfig) -> Result<()>;
    fn sync_endpoints(&mut self, wanted: &EndpointSet) -> Result<SyncStats>;
    fn add_endpoint(&mut self, key: EndpointKey, value: EndpointValue) -> Result<()>;
    fn remove_unknown_endpoints(&mut self) -> usize;
    fn sync_dns_names(&mut self, wanted: &HashMap<u64, DnsName>) -> Result<()>;
    fn set_cgroup_entry(&mut self, id: u64, entry: Option<PolicyEntry>) -> Result<()>;
    fn cgroup_ids(&self) -> Vec<u64>;
    fn set_proc_entry(&mut self, tgid: u32, entry: Option<PolicyEntry>) -> Result<()>;
    fn set_exe_verdict(&mut self, key: ExeKey, verdict: &ExeVerdict) -> Result<()>;
    fn clear_exe_verdicts(&mut self);
    fn set_exe_sizes(&mut self, sizes: &std::collections::HashSet<i64>) -> Result<()>;
    fn set_exe_special(&mut self, slot: u32, verdict: ExeVerdict) -> Result<()>;
    fn forget_proc(&mut self, tgid: u32);
    fn proc_tgids(&self) -> Vec<u32>;
    fn counters(&self) -> Result<Vec<(Counter, u64)>>;
    fn sizes(&self) -> Vec<MapSize>;
    fn endpoint_count(&self) -> usize;
}

/// Each method is the inherent one of the same name.
impl Maps for KernelMaps {
    fn beat(&mut self) -> Result<()> {
        KernelMaps::beat(self)
    }
    fn set_config(&mut self, config: AgentConfig) -> Result<()> {
        KernelMaps::set_config(self, config)
    }
    fn sync_endpoints(&mut self, wanted: &EndpointSet) -> Result<SyncStats> {
        KernelMaps::sync_endpoints(self, wanted)
    }
    fn add_endpoint(&mut self, key: EndpointKey, value: EndpointValue) -> Result<()> {
        KernelMaps::add_endpoint(self, key, value)
    }
    fn remove_unknown_endpoints(&mut self) -> usize {
        KernelMaps::remove_unknown_endpoints(self)
    }
    fn sync_dns_names(&mut self, wanted: &HashMap<u64, DnsName>) -> Result<()> {
        KernelMaps::sync_dns_names(self, wanted)
    }
    fn set_cgroup_entry(&mut self, id: u64, entry: Option<PolicyEntry>) -> Result<()> {
        KernelMaps::set_cgroup_entry(self, id, entry)
    }
    fn cgroup_ids(&self) -> Vec<u64> {
        KernelMaps::cgroup_ids(self)
    }
    fn set_proc_entry(&mut self, tgid: u32, entry: Option<PolicyEntry>) -> Result<()> {
        KernelMaps::set_proc_entry(self, tgid, entry)
    }
    fn set_exe_verdict(&mut self, key: ExeKey, verdict: &ExeVerdict) -> Result<()> {
        KernelMaps::set_exe_verdict(self, key, verdict)
    }
    fn clear_exe_verdicts(&mut self) {
        KernelMaps::clear_exe_verdicts(self)
    }
    fn set_exe_sizes(&mut self, sizes: &std::collections::HashSet<i64>) -> Result<()> {
        KernelMaps::set_exe_sizes(self, sizes)
    }
    fn set_exe_special(&mut self, slot: u32, verdict: ExeVerdict) -> Result<()> {
        KernelMaps::set_exe_special(self, slot, verdict)
    }
    fn forget_proc(&mut self, tgid: u32) {
        KernelMaps::forget_proc(self, tgid)
    }
    fn proc_tgids(&self) -> Vec<u32> {
        KernelMaps::proc_tgids(self)
    }
    fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        KernelMaps::counters(self)
    }
    fn sizes(&self) -> Vec<MapSize> {
        KernelMaps::sizes(self)
    }
    fn endpoint_count(&self) -> usize {
        KernelMaps::endpoint_count(self)
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct MapSize {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

impl MapSize {
    fn new(map: &'static str, entries: usize, capacity: u32) -> MapSize {
        MapSize {
            map,
            entries,
            capacity,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SyncStats {
    pub added: usize,
    pub removed: usize,
}

impl EndpointSet {
    fn port_flags(&self) -> HashMap<u16, u8> {
        let mut ports: HashMap<u16, u8> = HashMap::new();
        for port in &self.host_ports {
            *ports.entry(*port).or_default() |= port_flags::EXACT;
        }
        for key in self.exact.keys() {
            *ports.entry(key.port).or_default() |= port_flags::EXACT;
        }
        for (_, key) in self.cidrs.keys() {
            *ports.entry(u16::from_be_bytes(key.port_be)).or_default() |= port_flags::CIDR;
        }
        ports
    }
}
