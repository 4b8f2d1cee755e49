//! The daemon's enforcement and event handling against an in-memory fake
//! of the kernel maps: no root, no kernel. What reaches the kernel is read
//! back from the fake; what reaches the records, from the decision sink.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use agent_common::{
    AgentConfig, ConnectEvent, Counter, DnsName, EndpointKey, EndpointValue, EventHeader, ExeKey,
    ExeVerdict, ExecEvent, PolicyEntry, RULE_DEFAULT, action, hook, source,
};
use tokio::sync::watch;

use super::{Agent, Settings, status::Facts};
use crate::{
    alerts::{self, AlertsConfig},
    budget::{Budgets, Prices},
    catalog::{Catalog, learned::Learned, resolver::ResolvedHosts},
    config::FailMode,
    ebpf::{
        endpoints::EndpointSet,
        maps::{MapSize, Maps, Result, SyncStats},
    },
    identity::{cgroups::CgroupIndex, procs::ProcCache, users::Users},
    live::Live,
    metrics::Metrics,
    policy::{
        Policy, PolicyState, StorePrompts,
        compile::{Compiled, Ids},
    },
    proxy::ProxySettings,
    usage,
};

/// What the daemon wrote into the "kernel".
#[derive(Default)]
struct Written {
    config: Option<AgentConfig>,
    cgroups: HashMap<u64, PolicyEntry>,
    procs: HashMap<u32, PolicyEntry>,
    endpoints: usize,
}

#[derive(Clone, Default)]
struct FakeMaps(Arc<Mutex<Written>>);

impl Maps for FakeMaps {
    fn beat(&mut self) -> Result<()> {
        Ok(())
    }
    fn set_config(&mut self, config: AgentConfig) -> Result<()> {
        self.0.lock().unwrap().config = Some(config);
        Ok(())
    }
    fn sync_endpoints(&mut self, wanted: &EndpointSet) -> Result<SyncStats> {
        let mut written = self.0.lock().unwrap();
        let before = written.endpoints;
        written.endpoints = wanted.exact.len() + wanted.cidrs.len();
        Ok(SyncStats {
            added: written.endpoints.saturating_sub(before),
            removed: before.saturating_sub(written.endpoints),
        })
    }
    fn add_endpoint(&mut self, _: EndpointKey, _: EndpointValue) -> Result<()> {
        self.0.lock().unwrap().endpoints += 1;
        Ok(())
    }
    fn remove_unknown_endpoints(&mut self) -> usize {
        0
    }
    fn sync_dns_names(&mut self, _: &HashMap<u64, DnsName>) -> Result<()> {
        Ok(())
    }
    fn set_cgroup_entry(&mut self, id: u64, entry: Option<PolicyEntry>) -> Result<()> {
        let mut written = self.0.lock().unwrap();
        match entry {
            Some(entry) => written.cgroups.insert(id, entry),
            None => written.cgroups.remove(&id),
        };
        Ok(())
    }
    fn cgroup_ids(&self) -> Vec<u64> {
        self.0.lock().unwrap().cgroups.keys().copied().collect()
    }
    fn set_proc_entry(&mut self, tgid: u32, entry: Option<PolicyEntry>) -> Result<()> {
        let mut written = self.0.lock().unwrap();
        match entry {
            Some(entry) => written.procs.insert(tgid, entry),
            None => written.procs.remove(&tgid),
        };
        Ok(())
    }
    fn set_exe_verdict(&mut self, _: ExeKey, _: &ExeVerdict) -> Result<()> {
        Ok(())
    }
    fn clear_exe_verdicts(&mut self) {}
    fn set_exe_sizes(&mut self, _: &HashSet<i64>) -> Result<()> {
        Ok(())
    }
    fn set_exe_special(&mut self, _: u32, _: ExeVerdict) -> Result<()> {
        Ok(())
    }
    fn forget_proc(&mut self, tgid: u32) {
        self.0.lock().unwrap().procs.remove(&tgid);
    }
    fn proc_tgids(&self) -> Vec<u32> {
        self.0.lock().unwrap().procs.keys().copied().collect()
    }
    fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Ok(Counter::ALL.iter().map(|c| (*c, 0)).collect())
    }
    fn sizes(&self) -> Vec<MapSize> {
        Vec::new()
    }
    fn endpoint_count(&self) -> usize {
        self.0.lock().unwrap().endpoints
    }
}

const ENDPOINTS: &str =
    "providers:\n  - name: openai\n    api: openai\n    hosts: []\n    addresses: [192.0.2.10]\n";

struct Fixture {
    agent: Agent,
    written: FakeMaps,
    dir: tempfile::TempDir,
    /// The fake cgroup tree's `batch.service`.
    batch_cgroup: u64,
}

impl Fixture {
    /// An agent on `policy`, over a cgroup tree with `system.slice/batch.service`.
    fn new(policy: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        let mount = dir.path().join("cgroup");
        let state = dir.path().join("state");
        for d in [&policies, &mount.join("system.slice/batch.service"), &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(policies.join("endpoints.yaml"), ENDPOINTS).unwrap();
        std::fs::write(policies.join("policy.yaml"), policy).unwrap();
        let batch_cgroup = std::fs::metadata(mount.join("system.slice/batch.service"))
            .unwrap()
            .ino();

        let catalog = Catalog::load(&policies).expect("catalog");
        let policy = Policy::load(&policies, &catalog).expect("policy");
        let mut ids = Ids::default();
        let compiled = Compiled::new(policy.clone(), &catalog, &mut ids).unwrap();
        let shared_policy = Arc::new(RwLock::new(Arc::new(PolicyState {
            policy,
            prices: Prices::default(),
            default_override: None,
        })));
        let (alerts, _) = alerts::open(&state, &AlertsConfig::default()).unwrap();
        let (usage, _) = usage::open(&state, Duration::from_secs(3600)).unwrap();
        let mut cgroups = CgroupIndex::new(mount.clone());
        cgroups.rescan().unwrap();
        let written = FakeMaps::default();
        let settings = Settings {
            policies,
            cgroup: mount.clone(),
            cgroup_mount: mount.clone(),
            events: dir.path().join("events.jsonl").display().to_string(),
            default_action: None,
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_token: None,
            usage_retention: Duration::from_secs(3600),
            proxy: ProxySettings {
                port: 0,
                state_dir: state.clone(),
                upstream_ca: None,
                store_prompts: StorePrompts::None,
                limits: Default::default(),
                upstream_timeouts: Default::default(),
                audit_failure: Default::default(),
            },
            alerts: AlertsConfig::default(),
            otlp: None,
            pin_dir: dir.path().join("pins"),
            fail_mode: FailMode::default(),
            fail_open_after: Duration::from_secs(30),
            log_decisions: false,
        };
        let agent = Agent {
            maps: Box::new(written.clone()),
            ids,
            catalog,
            compiled,
            sink: crate::sink::open(&settings.events).unwrap().0,
            settings,
            generation: 0,
            resolved: ResolvedHosts::default(),
            learned: Learned::default(),
            endpoints: EndpointSet::default(),
            hosts_tx: watch::channel(Vec::new()).0,
            procs: ProcCache::new(mount.clone()),
            cgroups,
            users: Users::default(),
            decode_errors: 0,
            lost_reported: 0,
            unknown_cgroups: HashMap::new(),
            proxy_port: 4443,
            metrics: Metrics::new(),
            heartbeat: None,
            attachments: None,
            tampered: Vec::new(),
            shared_policy,
            budgets: Arc::new(Mutex::new(Budgets::load(&state).0)),
            alerts,
            usage,
            quarantined: HashMap::new(),
            live: Arc::new(Live::default()),
            facts: Facts {
                started: SystemTime::now(),
                policy_version: String::new(),
                policy_loaded: SystemTime::now(),
                proxy_listeners: Vec::new(),
                proxy_connections: Default::default(),
                metrics_addr: "127.0.0.1:0".parse().unwrap(),
                control_socket: state.join("control.sock"),
                audit_dropped: Default::default(),
                audit_health: Default::default(),
                otlp: None,
            },
            exe_identity: false,
            digests: Default::default(),
            vetted: HashMap::new(),
            rule_sizes: Default::default(),
            rule_files: HashMap::new(),
        };
        Fixture {
            agent,
            written,
            dir,
            batch_cgroup,
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.0.lock().unwrap()
    }

    /// The decision records written so far.
    /// The decision records written so far (the writer is a thread of its
    /// own: waits for `count` of them, for a while).
    async fn decisions(&self, count: usize) -> Vec<serde_json::Value> {
        let path = self.dir.path().join("events.jsonl");
        for _ in 0..200 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= count {
                return text
                    .lines()
                    .map(|line| serde_json::from_str(line).unwrap())
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {count} decision records in {}", path.display());
    }
}

/// The action and rule an entry gives the catalog's only provider.
fn first_provider(entry: &PolicyEntry) -> (u8, u16) {
    (entry.actions[0], entry.rules[0])
}

fn exec_event(tgid: u32, exe: &Path, cgroup_id: u64) -> ExecEvent {
    // SAFETY: ExecEvent is plain old data; all zeroes is a valid value.
    let mut ev: ExecEvent = unsafe { std::mem::zeroed() };
    ev.header = EventHeader {
        kind: 0,
        tgid,
        pid: tgid,
        _pad: 0,
        boot_ns: 0,
    };
    ev.cgroup_id = cgroup_id;
    let name = exe.as_os_str().as_encoded_bytes();
    ev.filename[..name.len()].copy_from_slice(name);
    ev.filename_len = name.len() as u32;
    ev.comm[..4].copy_from_slice(b"test");
    ev
}

#[tokio::test]
async fn the_policy_reaches_the_kernel_as_config_and_cgroup_entries() {
    let mut fx = Fixture::new(
        "default_action: block\nrules:\n  - name: batch-may-call\n    match:\n      unit: [batch.service]\n    action: monitor\n",
    );
    fx.agent.apply_policy().unwrap();
    fx.agent.sync_endpoints().unwrap();
    let written = fx.written();
    let config = written.config.expect("the config is written");
    assert_eq!(config.default_action, action::BLOCK);
    assert_eq!(config.proxy_port, 4443);
    assert_eq!(config.generation, 1);
    let entry = written
        .cgroups
        .get(&fx.batch_cgroup)
        .expect("batch.service's cgroup has an entry");
    let (verdict, rule) = first_provider(entry);
    assert_eq!(verdict, action::MONITOR);
    assert_eq!(fx.agent.rule_name(rule), "batch-may-call");
    assert_eq!(
        written.cgroups.len(),
        1,
        "no entry where the default applies"
    );
    assert_eq!(written.endpoints, 2, "the catalog's address on 443 and 80");
}

#[tokio::test]
async fn a_reload_that_drops_a_rule_removes_its_entries() {
    let mut fx = Fixture::new(
        "default_action: monitor\nrules:\n  - name: no-batch\n    match:\n      unit: [batch.service]\n    action: block\n",
    );
    fx.agent.apply_policy().unwrap();
    assert_eq!(fx.written().cgroups.len(), 1);
    std::fs::write(
        fx.agent.settings.policies.join("policy.yaml"),
        "default_action: monitor\nrules: []\n",
    )
    .unwrap();
    fx.agent.reload("test").unwrap();
    let written = fx.written();
    assert!(written.cgroups.is_empty(), "the rule's entry is gone");
    assert_eq!(written.config.unwrap().generation, 2);
}

#[tokio::test]
async fn an_exec_of_a_ruled_program_gets_a_process_entry_and_other_programs_none() {
    let me = std::env::current_exe().unwrap();
    let policy = format!(
        "default_action: monitor\nrules:\n  - name: no-tests\n    match:\n      exe: [{}]\n    action: block\n",
        me.display()
    );
    let mut fx = Fixture::new(&policy);
    fx.agent.apply_policy().unwrap();
    let tgid = std::process::id();
    fx.agent.on_exec(&exec_event(tgid, &me, fx.batch_cgroup));
    {
        let written = fx.written();
        let entry = written
            .procs
            .get(&tgid)
            .expect("a process entry for the exec");
        let (verdict, rule) = first_provider(entry);
        assert_eq!(verdict, action::BLOCK);
        assert_eq!(fx.agent.rule_name(rule), "no-tests");
    }
    // Another program in the same cgroup: no entry of its own.
    fx.agent.on_exec(&exec_event(
        tgid + 1,
        Path::new("/usr/bin/true"),
        fx.batch_cgroup,
    ));
    assert!(!fx.written().procs.contains_key(&(tgid + 1)));
}

#[tokio::test]
async fn a_connect_is_recorded_with_its_rule_provider_and_process() {
    let mut fx = Fixture::new(
        "default_action: monitor\nrules:\n  - name: batch-blocked\n    match:\n      unit: [batch.service]\n    action: block\n",
    );
    fx.agent.apply_policy().unwrap();
    let entry = fx.written().cgroups[&fx.batch_cgroup];
    let (verdict, rule) = first_provider(&entry);
    // SAFETY: ConnectEvent is plain old data; all zeroes is a valid value.
    let mut ev: ConnectEvent = unsafe { std::mem::zeroed() };
    ev.header.tgid = std::process::id();
    ev.header.pid = std::process::id();
    ev.cgroup_id = fx.batch_cgroup;
    ev.addr = agent_common::to_v6_bytes("192.0.2.10".parse().unwrap());
    ev.port = 443;
    ev.protocol = 6;
    ev.hook = hook::CONNECT;
    ev.action = verdict;
    ev.rule = rule;
    ev.provider = 0;
    ev.source = source::CGROUP;
    fx.agent.on_connect(&ev);
    let decisions = fx.decisions(1).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    let record = &decisions[0];
    assert_eq!(record["event"], "connect", "{record:#}");
    assert_eq!(record["action"], "block", "{record:#}");
    assert_eq!(record["rule"], "batch-blocked", "{record:#}");
    assert_eq!(record["decided_by"], "cgroup", "{record:#}");
    assert_eq!(record["gen_ai.provider.name"], "openai", "{record:#}");
    assert_eq!(record["api"], "openai", "{record:#}");
    assert_eq!(record["destination"]["ip"], "192.0.2.10", "{record:#}");
    assert_eq!(record["identity"]["pid"], std::process::id(), "{record:#}");
    assert_eq!(
        record["identity"]["cgroup"], "/system.slice/batch.service",
        "{record:#}"
    );
    assert_ne!(rule, RULE_DEFAULT);
}
