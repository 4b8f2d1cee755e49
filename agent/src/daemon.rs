//! `modelgate run`: the agent's wiring. One task owns the kernel maps, the
//! policy and the caches; events, resolver answers, signals and a timer are
//! its inputs, so no state is shared and no lock is taken on the hot path.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use agent_common::{AgentConfig, ConnectEvent, Counter, ExecEvent, Redirect, hook, names, source};
use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{debug, error, info, warn};

mod exec;
mod status;

use self::status::Facts;
use crate::{
    alerts::{self, Alert, Alerts, Severity},
    audit,
    budget::{Budgets, Prices},
    catalog::{
        Catalog, HostPattern,
        learned::Learned,
        resolver::{self, Resolved, ResolvedHosts},
        sni,
    },
    config::FailMode,
    control::{self, live::Live},
    ebpf::{
        self,
        endpoints::{self, EndpointSet, from_v6_bytes},
        events::{self, Event},
        maps::KernelMaps,
    },
    heartbeat::Heartbeat,
    identity::{
        Identity, c_str,
        cgroups::CgroupIndex,
        cmdline,
        procs::{ProcCache, ProcInfo},
        users::Users,
    },
    metrics::Metrics,
    notify::Notifier,
    policy::{
        Action, CgroupFacts, Policy, PolicyState, ProcFacts,
        compile::{Compiled, Ids},
    },
    proxy::{ConnInfo, Control, Describe, Proxy, ProxyLinks, ProxySettings, SharedPolicy},
    record::{self, Decision, Destination},
    sink::Sink,
    usage, watchdog,
};

const TICK: Duration = Duration::from_secs(5);
/// Events handled per turn of the main loop.
const DRAIN_BATCH: usize = 512;
/// How often the kernel hears from us; `fail_open_after` is at least 3 s.
const KERNEL_BEAT: Duration = Duration::from_secs(1);

pub struct Settings {
    pub policies: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_mount: PathBuf,
    pub events: String,
    pub default_action: Option<Action>,
    pub metrics_addr: std::net::SocketAddr,
    /// The bearer token `/metrics` asks for, if any.
    pub metrics_token: Option<String>,
    pub usage_retention: Duration,
    pub proxy: ProxySettings,
    pub alerts: alerts::AlertsConfig,
    pub otlp: Option<crate::otlp::OtlpConfig>,
    pub pin_dir: PathBuf,
    pub fail_mode: FailMode,
    pub fail_open_after: Duration,
    pub log_decisions: bool,
}

/// How long proxied requests in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the OTLP exporter may take to send what is queued at shutdown.
const OTLP_FLUSH: Duration = Duration::from_secs(5);

struct Agent {
    maps: KernelMaps,
    ids: Ids,
    catalog: Catalog,
    compiled: Compiled,
    settings: Settings,
    generation: u32,
    resolved: ResolvedHosts,
    /// Addresses the kernel learned from DNS answers, with their TTLs.
    learned: Learned,
    endpoints: EndpointSet,
    hosts_tx: watch::Sender<Vec<String>>,
    procs: ProcCache,
    cgroups: CgroupIndex,
    users: Users,
    sink: Sink,
    decode_errors: u64,
    lost_reported: u64,
    unknown_cgroups: HashMap<u64, Instant>,
    proxy_port: u16,
    metrics: Arc<Metrics>,
    heartbeat: Option<Heartbeat>,
    attachments: Option<ebpf::tamper::Attachments>,
    /// Programs last found detached (reported already).
    tampered: Vec<&'static str>,
    shared_policy: SharedPolicy,
    budgets: Arc<Mutex<Budgets>>,
    alerts: Alerts,
    usage: usage::UsageLog,
    /// Processes whose model connects are blocked until the instant, by
    /// the named rule (a proxy quarantine verdict).
    quarantined: HashMap<u32, (Instant, String)>,
    live: Arc<Live>,
    facts: Facts,
    /// The kernel reads which file a process executes (BTF offsets found).
    exe_identity: bool,
    /// Digests of executables, by file version.
    digests: crate::identity::exe::DigestCache,
    /// Files whose verdict the exec hook knows.
    vetted: HashMap<agent_common::ExeKey, exec::Vetted>,
    /// Sizes of the files the policy's literal `exe` paths name.
    rule_sizes: std::collections::HashSet<i64>,
    /// The versions of the files literal `exe` paths name, to notice an
    /// upgrade.
    rule_files: HashMap<String, agent_common::ExeFile>,
}

pub async fn run(settings: Settings) -> Result<()> {
    let catalog = Catalog::load(&settings.policies)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the endpoint catalog is invalid; fix it (see `modelgate policy check`)")?;
    let policy = Policy::load(&settings.policies, &catalog)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the policy is invalid; fix it (see `modelgate policy check`)")?;
    let prices = Prices::load_dir(&settings.policies)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the price table is invalid; fix it (see `modelgate policy check`)")?;
    let mut digests = crate::identity::exe::DigestCache::default();
    let mut policy = policy;
    exec::literal_digests(&mut policy, &mut digests);
    let shared_policy: SharedPolicy = Arc::new(RwLock::new(Arc::new(PolicyState {
        policy: policy.clone(),
        prices,
        default_override: settings.default_action,
    })));
    let (budgets, warning) = Budgets::load(&settings.proxy.state_dir);
    if let Some(warning) = warning {
        warn!("{warning}");
    }
    let budgets = Arc::new(Mutex::new(budgets));

    let mut programs = ebpf::load(&settings.pin_dir)?;
    let (mut maps, ring) = KernelMaps::take(&mut programs.ebpf)?;
    // What the last agent wrote is what the kernel enforced while we were
    // away; know it, so what this policy no longer wants is removed.
    let adopted = if programs.pins.compatible {
        maps.adopt().context("reading the adopted maps")?
    } else {
        None
    };
    let redirects = ebpf::maps::take(&mut programs.ebpf, names::MAP_REDIRECT_PORT)?;
    let (alerts, alerts_writer) = alerts::open(&settings.proxy.state_dir, &settings.alerts)?;
    let (audit, audit_writer) = audit::open(
        &settings.proxy.state_dir,
        alerts.clone(),
        settings.proxy.audit_failure,
    )?;
    let (describe_tx, mut describe_rx) = mpsc::channel::<Describe>(1024);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(1024);
    let metrics = Metrics::new();
    metrics.watch_queue("audit", audit.dropped.clone());
    metrics.watch_alerts(alerts.counters());
    let (usage, usage_writer) = usage::open(&settings.proxy.state_dir, settings.usage_retention)?;
    metrics.watch_queue("usage", usage.dropped.clone());
    let metrics_addr = crate::metrics::serve(
        settings.metrics_addr,
        metrics.clone(),
        settings.metrics_token.clone(),
    )
    .await?;
    let audit_dropped = audit.dropped.clone();
    let audit_health = audit.health.clone();
    let live = Arc::new(Live::default());
    let (otlp, otlp_exporter) = match &settings.otlp {
        Some(config) => {
            let (handle, exporter) = crate::otlp::spawn(config, &metrics)?;
            (Some(handle), Some(exporter))
        }
        None => (None, None),
    };
    let otlp_health = settings
        .otlp
        .as_ref()
        .zip(otlp_exporter.as_ref())
        .map(|(config, exporter)| exporter.health(config));
    let links = ProxyLinks {
        live: live.clone(),
        metrics: metrics.clone(),
        audit,
        usage: usage.clone(),
        alerts: alerts.clone(),
        describe: describe_tx,
        control: control_tx,
        policy: shared_policy.clone(),
        budgets: budgets.clone(),
        otlp,
    };
    let proxy = Proxy::bind(&settings.proxy, redirects, links).await?;
    let proxy_port = proxy.port;
    metrics.watch_proxy_refused(proxy.refused());
    let (api_tx, mut api_rx) = mpsc::channel::<control::Request>(64);
    let control_socket = control::socket_path(&settings.proxy.state_dir);
    let _control = control::serve(
        &control_socket,
        control::Context {
            state_dir: settings.proxy.state_dir.clone(),
            alerts_file: settings
                .alerts
                .file
                .path
                .clone()
                .unwrap_or_else(|| settings.proxy.state_dir.join(alerts::FILE_NAME)),
            live: live.clone(),
            daemon: api_tx,
        },
    )
    .await?;
    let facts = Facts {
        started: SystemTime::now(),
        policy_version: String::new(),
        policy_loaded: SystemTime::now(),
        proxy_listeners: proxy.addresses().iter().map(ToString::to_string).collect(),
        proxy_connections: proxy.connections(),
        metrics_addr,
        control_socket: control_socket.clone(),
        audit_dropped,
        audit_health,
        otlp: otlp_health,
    };
    let mut ids = Ids::default();
    let compiled = Compiled::new(policy, &catalog, &mut ids)?;
    let (hosts_tx, hosts_rx) = watch::channel(catalog.exact_hosts());
    let mut cgroups = CgroupIndex::new(settings.cgroup_mount.clone());
    if let Err(err) = cgroups.rescan() {
        warn!("{err:#}");
    }
    let mut procs = ProcCache::new(settings.cgroup_mount.clone());
    procs.scan();
    let sink = Sink::open(&settings.events)?;

    let mut agent = Agent {
        maps,
        ids,
        catalog,
        compiled,
        settings,
        generation: 0,
        resolved: ResolvedHosts::default(),
        learned: Learned::default(),
        endpoints: EndpointSet::default(),
        hosts_tx,
        procs,
        cgroups,
        users: Users::default(),
        sink,
        decode_errors: 0,
        lost_reported: 0,
        unknown_cgroups: HashMap::new(),
        proxy_port,
        metrics,
        heartbeat: None,
        attachments: None,
        tampered: Vec::new(),
        shared_policy,
        budgets,
        alerts,
        usage,
        quarantined: HashMap::new(),
        live,
        facts,
        exe_identity: programs.exe_identity,
        digests,
        vetted: HashMap::new(),
        rule_sizes: Default::default(),
        rule_files: HashMap::new(),
    };
    agent.policy_loaded();
    // Everything is in the maps before the hooks see their first connect.
    agent.apply_policy()?;
    agent.sync_endpoints()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let proxy = tokio::spawn(proxy.serve(shutdown_rx, SHUTDOWN_GRACE));
    // Beat before attaching: under fail_mode open, adopted programs must
    // not take us for gone while we take over.
    agent.kernel_beat();
    let attached = programs.attach(&agent.settings.cgroup)?;
    info!(
        pins = %programs.pins.root().display(),
        adopted = programs.pins.adopting,
        switched = attached.switched,
        attached = attached.attached,
        programs = attached.switched + attached.attached,
        "programs in force"
    );
    let (heartbeat, gap) = Heartbeat::open(&agent.settings.proxy.state_dir);
    if let Some(gap) = gap {
        let kernel = adopted.map(|config| config.fail_open_after_s);
        agent.alerts.send(watchdog::gap_alert(&gap, kernel));
    }
    agent.attachments = Some(programs.attachments(&agent.settings.cgroup)?);
    agent.heartbeat = Some(heartbeat);
    agent.beat(false);
    // Signals and watching start before we say ready: a SIGHUP or a change
    // right after the ready line must not fall into the gap.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (_watcher, mut changes) = watch_policies(&agent.settings.policies);
    info!(
        proxy = %format!("127.0.0.1:{proxy_port}"),
        metrics = %metrics_addr,
        control = %control_socket.display(),
        policy_version = %agent.facts.policy_version,
        cgroup = %agent.settings.cgroup.display(),
        policies = %agent.settings.policies.display(),
        providers = agent.catalog.providers.len(),
        rules = agent.compiled.policy.rules.len(),
        default_action = %agent.default_action(),
        events = %agent.settings.events,
        "modelgate ready"
    );
    let notifier = Notifier::from_env();
    notifier.notify(&format!(
        "READY=1\nSTATUS=enforcing policy {} on {}",
        agent.facts.policy_version,
        agent.settings.cgroup.display()
    ));
    let mut watchdog =
        tokio::time::interval(notifier.watchdog.unwrap_or(Duration::from_secs(3600)));

    let (resolved_tx, mut resolved_rx) = mpsc::channel::<Resolved>(64);
    let resolver = tokio::spawn(resolver::run(hosts_rx, resolved_tx));

    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd,
    // which keeps it open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(TICK);
    let mut kernel_beat = tokio::time::interval(KERNEL_BEAT);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                // A batch at a time: under a flood of events the loop still
                // answers the control socket, reloads and ticks in between.
                if !agent.drain(guard.get_inner_mut(), DRAIN_BATCH) {
                    guard.clear_ready();
                }
            }
            Some(update) = resolved_rx.recv() => {
                if agent.resolved.update(update)
                    && let Err(err) = agent.sync_endpoints()
                {
                    error!("{err:#}");
                }
            }
            Some(query) = describe_rx.recv() => {
                let info = agent.describe(&query.redirect);
                let _ = query.reply.send(info);
            }
            Some(control) = control_rx.recv() => agent.control(control),
            Some(request) = api_rx.recv() => agent.answer(request),
            _ = hup.recv() => { let _ = agent.reload("SIGHUP"); }
            Some(()) = changes.recv() => { let _ = agent.reload("a policy file changed"); }
            _ = tick.tick() => agent.tick(),
            _ = kernel_beat.tick() => agent.kernel_beat(),
            _ = watchdog.tick(), if notifier.watchdog.is_some() => notifier.notify("WATCHDOG=1"),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    notifier.notify("STOPPING=1");
    // Requests in flight finish (or are cancelled and say so); every audit
    // record is on disk before we report that we stopped.
    let _ = shutdown_tx.send(true);
    let proxy_done = proxy;
    tokio::pin!(proxy_done);
    loop {
        tokio::select! {
            _ = &mut proxy_done => break,
            Some(query) = describe_rx.recv() => {
                let info = agent.describe(&query.redirect);
                let _ = query.reply.send(info);
            }
        }
    }
    drop(describe_rx);
    if let Err(err) = audit_writer.await {
        error!("the audit writer failed: {err}");
    }
    if let Some(exporter) = otlp_exporter {
        exporter.finish(OTLP_FLUSH).await;
    }
    agent.save_budgets();
    agent.beat(true);
    // Whatever the kernel queued before we stop is still recorded.
    agent.drain(ring.get_mut(), usize::MAX);
    agent.report_counters(true);
    resolver.abort();
    let agent_settings_fail_mode = agent.settings.fail_mode;
    let agent_settings_fail_after = agent.settings.fail_open_after.as_secs();
    drop(agent);
    if usage_writer.join().is_err() {
        error!("the usage writer panicked");
    }
    match alerts_writer.await {
        Ok(stats) => info!(counters = %stats, "alerts"),
        Err(err) => error!("the alert writer failed: {err}"),
    }
    let pins = programs.pins.root().to_path_buf();
    drop(programs);
    match agent_settings_fail_mode {
        FailMode::Closed => info!(
            pins = %pins.display(),
            "modelgate stopped; its programs stay attached and keep enforcing the last policy \
             (fail_mode closed: redirected calls fail until it is back); \
             `modelgate uninstall-bpf` removes them"
        ),
        FailMode::Open => info!(
            pins = %pins.display(),
            "modelgate stopped; its programs stay attached and, {}s from now, only monitor \
             (fail_mode open); `modelgate uninstall-bpf` removes them",
            agent_settings_fail_after
        ),
    }
    Ok(())
}

impl Agent {
    fn default_action(&self) -> Action {
        self.settings
            .default_action
            .unwrap_or(self.compiled.policy.default_action)
    }

    /// Writes config, global, per-cgroup and per-process entries for the
    /// current policy.
    fn apply_policy(&mut self) -> Result<()> {
        self.generation = self.generation.wrapping_add(1);
        // Quarantines are per-process entries too.
        let has_proc_rules =
            self.compiled.policy.has_process_rules() || !self.quarantined.is_empty();
        self.maps.set_config(AgentConfig {
            default_action: self.default_action().to_kernel(),
            has_proc_rules: u8::from(has_proc_rules),
            suffix_labels: self.catalog.suffix_labels(),
            exe_rules: u8::from(self.exe_rules_in_kernel()),
            generation: self.generation,
            proxy_port: self.proxy_port,
            fail_open_after_s: match self.settings.fail_mode {
                FailMode::Closed => 0,
                FailMode::Open => self.settings.fail_open_after.as_secs() as u16,
            },
            agent_tgid: std::process::id(),
        })?;
        self.sync_exe_verdicts()?;
        self.refresh_cgroup_entries()?;
        if !has_proc_rules {
            for tgid in self.maps.proc_tgids() {
                self.maps.set_proc_entry(tgid, None)?;
            }
            return Ok(());
        }
        let mut tgids: Vec<u32> = self.procs.iter().map(|p| p.tgid).collect();
        tgids.extend(self.maps.proc_tgids());
        tgids.sort_unstable();
        tgids.dedup();
        let exe_rules = self.compiled.policy.has_exe_rules();
        for tgid in tgids {
            if exe_rules {
                self.vet_running(tgid);
            }
            self.refresh_proc_entry(tgid)?;
        }
        Ok(())
    }

    fn refresh_cgroup_entries(&mut self) -> Result<()> {
        let global = self.compiled.global_entry();
        self.maps
            .set_cgroup_entry(0, Compiled::has_any_verdict(&global).then_some(global))?;
        let mut live = Vec::new();
        for (id, cgroup) in self.cgroups.iter() {
            let facts = cgroup_facts(&cgroup.path, &cgroup.info);
            let entry = self.compiled.entry(None, Some(&facts));
            live.push((id, (entry != global).then_some(entry)));
        }
        let known: Vec<u64> = live.iter().map(|(id, _)| *id).collect();
        for (id, entry) in live {
            self.maps.set_cgroup_entry(id, entry)?;
        }
        for id in self.maps.cgroup_ids() {
            if id != 0 && !known.contains(&id) {
                self.maps.set_cgroup_entry(id, None)?;
            }
        }
        Ok(())
    }

    /// A per-process entry only where the process's own facts change the
    /// verdict that its cgroup (or the global entry) would give.
    fn refresh_proc_entry(&mut self, tgid: u32) -> Result<()> {
        if let Some((_, rule)) = self.quarantined.get(&tgid) {
            let rule_id = self.ids.rule(rule)?;
            let mut entry = agent_common::PolicyEntry::EMPTY;
            entry.actions = [agent_common::action::BLOCK; agent_common::limits::MAX_PROVIDERS];
            entry.rules = [rule_id; agent_common::limits::MAX_PROVIDERS];
            return self.maps.set_proc_entry(tgid, Some(entry));
        }
        if !self.compiled.policy.has_process_rules() {
            return Ok(());
        }
        let Some(info) = self.procs.lookup(tgid).cloned() else {
            // Gone: the kernel removed its entry on exit.
            self.maps.forget_proc(tgid);
            return Ok(());
        };
        let user = self.users.name(info.uid);
        let group = self.users.group(info.gid);
        let proc_facts = ProcFacts {
            exe: info.exe.as_deref(),
            exe_sha256: info.exe_facts.exe_sha256.as_deref(),
            anonymous_exec: info.exe_facts.anonymous_exec,
            comm: &info.comm,
            uid: info.uid,
            user: user.as_deref(),
            gid: info.gid,
            group: group.as_deref(),
        };
        let cgroup = self.cgroups.get(info.cgroup_id);
        let cgroup_facts = cgroup.map(|c| cgroup_facts(&c.path, &c.info));
        let full = self
            .compiled
            .entry(Some(&proc_facts), cgroup_facts.as_ref());
        let base = self.compiled.entry(None, cgroup_facts.as_ref());
        self.maps
            .set_proc_entry(tgid, (full != base).then_some(full))
    }

    fn sync_endpoints(&mut self) -> Result<()> {
        self.resolved.retain_hosts(&self.catalog.exact_hosts());
        let set = EndpointSet::build(&self.catalog, &self.resolved, &self.learned, &mut self.ids)?;
        let dns_names = endpoints::dns_names(&self.catalog, &mut self.ids)?;
        self.maps.sync_dns_names(&dns_names)?;
        if set.conflicts > 0 {
            debug!(
                conflicts = set.conflicts,
                "addresses shared by several providers; the first in catalog order keeps them"
            );
        }
        let stats = self.maps.sync_endpoints(&set)?;
        if stats.added + stats.removed > 0 {
            info!(
                added = stats.added,
                removed = stats.removed,
                total = self.maps.endpoint_count(),
                "endpoint maps updated"
            );
        }
        self.endpoints = set;
        Ok(())
    }

    /// SIGHUP or a file change: load catalog, policy and prices again;
    /// keep the old ones on error, and say so in an alert.
    fn reload(&mut self, trigger: &str) -> Result<(), String> {
        let loaded = Catalog::load(&self.settings.policies).and_then(|catalog| {
            let policy = Policy::load(&self.settings.policies, &catalog)?;
            Ok((catalog, policy))
        });
        let loaded = loaded.and_then(|(catalog, policy)| {
            let prices = Prices::load_dir(&self.settings.policies)?;
            Ok((catalog, policy, prices))
        });
        let (catalog, policy, prices) = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                error!(
                    trigger,
                    "reload refused, the previous policy stays in force:\n{errors}"
                );
                let mut alert = Alert::new(
                    "policy-invalid",
                    Severity::High,
                    format!(
                        "a policy change was refused; the previous policy stays in force: {errors}"
                    ),
                );
                alert.details.insert(
                    "errors".into(),
                    errors
                        .0
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .into(),
                );
                self.alerts.send(alert.with_id());
                return Err(errors.to_string());
            }
        };
        let mut policy = policy;
        exec::literal_digests(&mut policy, &mut self.digests);
        let state = Arc::new(PolicyState {
            policy: policy.clone(),
            prices,
            default_override: self.settings.default_action,
        });
        let compiled = match Compiled::new(policy, &catalog, &mut self.ids) {
            Ok(compiled) => compiled,
            Err(err) => {
                error!("reload refused, the previous policy stays in force: {err}");
                return Err(err.to_string());
            }
        };
        self.catalog = catalog;
        self.compiled = compiled;
        let catalog = &self.catalog;
        self.learned
            .retain_providers(|p| catalog.provider(p).is_some());
        // New requests decide with the new policy; those in flight keep the
        // Arc they started with.
        *self.shared_policy.write().expect("policy lock poisoned") = state;
        self.users.clear();
        let _ = self.hosts_tx.send(self.catalog.exact_hosts());
        if let Err(err) = self.sync_endpoints().and_then(|()| self.apply_policy()) {
            error!("applying the reloaded policy failed: {err:#}");
            return Err(format!(
                "applying the policy to the kernel maps failed: {err:#}"
            ));
        }
        self.policy_loaded();
        info!(
            version = %self.facts.policy_version,
            providers = self.catalog.providers.len(),
            rules = self.compiled.policy.rules.len(),
            generation = self.generation,
            default_action = %self.default_action(),
            trigger,
            "policy reloaded"
        );
        Ok(())
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::Quarantine { tgid, until, rule } => {
                info!(tgid, %rule, "quarantining a process's model access");
                self.quarantined.insert(tgid, (until, rule));
                if let Err(err) = self.apply_policy() {
                    error!("applying a quarantine failed: {err:#}");
                }
            }
        }
    }

    fn expire_quarantines(&mut self) {
        let now = Instant::now();
        let expired: Vec<u32> = self
            .quarantined
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(tgid, _)| *tgid)
            .collect();
        if expired.is_empty() {
            return;
        }
        for tgid in &expired {
            self.quarantined.remove(tgid);
            info!(tgid, "quarantine over");
            if let Err(err) = self.maps.set_proc_entry(*tgid, None) {
                error!("{err:#}");
            }
        }
        if let Err(err) = self.apply_policy() {
            error!("{err:#}");
        }
    }

    /// The write (with fsync) happens outside the lock, so the proxy's
    /// budget checks never wait on the disk.
    fn save_budgets(&self) {
        let job = {
            let mut budgets = self.budgets.lock().expect("budget lock poisoned");
            budgets.prune(std::time::SystemTime::now());
            budgets.take_save()
        };
        if let Some(job) = job
            && let Err(err) = job.write()
        {
            self.budgets
                .lock()
                .expect("budget lock poisoned")
                .mark_unsaved();
            warn!(error = %err, "cannot save budget counters; they will restart from the last save");
        }
    }

    fn tick(&mut self) {
        self.procs.purge();
        crate::proxy::release_unused_tokenizers();
        // Bursts fill the record queues (bounded) and glibc keeps what they
        // freed: hand it back, so RSS shows what is live, not the last peak.
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
        self.beat(false);
        self.check_tamper();
        if self.learned.expire(Instant::now())
            && let Err(err) = self.sync_endpoints()
        {
            error!("{err:#}");
        }
        self.expire_quarantines();
        self.save_budgets();
        self.refresh_rule_files();
        match self.cgroups.rescan() {
            Ok(true) => {
                if let Err(err) = self.refresh_cgroup_entries() {
                    error!("{err:#}");
                }
            }
            Ok(false) => {}
            Err(err) => warn!("{err:#}"),
        }
        self.report_counters(false);
    }

    /// Lost events are never silent: every increase is logged.
    fn report_counters(&mut self, summary: bool) {
        let counters = match self.maps.counters() {
            Ok(counters) => counters,
            Err(err) => {
                warn!("{err:#}");
                return;
            }
        };
        let get = |c: Counter| {
            counters
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        };
        self.metrics.set_kernel(&counters);
        self.metrics.set_map_sizes(&self.maps.sizes());
        let lost = get(Counter::EventsLost);
        if lost > self.lost_reported {
            // Some were DNS answers the kernel acted on but we never saw:
            // drop what we cannot account for (a lookup answered again
            // brings it back), so the map does not fill with orphans.
            let removed = self.maps.remove_unknown_endpoints();
            if removed > 0 {
                warn!(
                    removed,
                    "removed endpoint addresses learned by the kernel whose events were lost"
                );
            }
            warn!(
                lost_total = lost,
                lost_new = lost - self.lost_reported,
                "the kernel dropped events because the ring buffer was full; \
                 their verdicts were enforced but not recorded"
            );
            self.lost_reported = lost;
        }
        if summary {
            let fields: Vec<String> = counters
                .iter()
                .map(|(c, v)| format!("{}={v}", c.name()))
                .collect();
            info!(
                counters = %fields.join(" "),
                records_written = self.sink.written,
                records_failed = self.sink.failed,
                decode_errors = self.decode_errors,
                "final counters"
            );
        }
    }

    /// Handles up to `budget` queued events; `true` if more are waiting.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, budget: usize) -> bool {
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
        if handled > 0 {
            self.sink.flush();
        }
        handled == budget
    }

    /// The kernel already put the answer's addresses in the endpoint map;
    /// here they get their TTL, and a name for the decision records.
    fn on_dns(&mut self, ev: &agent_common::DnsEvent) {
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
        debug!(%provider, addrs = %crate::record::list(&new), "learned from DNS");
        // One key per new address and port, not a rebuild of the whole set:
        // answers can come by the thousand.
        let Some(entry) = self.catalog.provider(&provider) else {
            return;
        };
        let Ok(id) = self.ids.provider(&provider) else {
            return;
        };
        let value = agent_common::EndpointValue {
            provider: id,
            _reserved: 0,
        };
        for addr in &new {
            let host = self.learned.get(addr).map(|l| l.host.clone());
            for port in &entry.ports {
                let key = agent_common::EndpointKey {
                    addr: endpoints::to_v6_bytes(*addr),
                    port: *port,
                    _pad: [0; 2],
                };
                self.endpoints.exact.entry(key).or_insert(value);
                if let Err(err) = self.maps.add_endpoint(key, value) {
                    error!("{err:#}");
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
    fn on_egress(&mut self, ev: &agent_common::EgressEvent) {
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
        let ip = from_v6_bytes(ev.addr);
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
        self.alerts.send(watchdog::egress_alert(
            kind, &identity, &provider, &host, ip, ev.port,
        ));
    }

    /// First bytes the kernel held back: it could not read them, and the
    /// workload may not reach some provider directly.
    fn on_unreadable(&mut self, ev: &agent_common::EgressEvent, bytes: &[u8]) {
        let ip = from_v6_bytes(ev.addr);
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
        self.alerts.send(watchdog::unreadable_alert(
            &identity,
            host.as_deref(),
            bytes.len(),
            ip,
            ev.port,
        ));
    }

    fn on_exec(&mut self, ev: &ExecEvent) {
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
    fn ensure_cgroup_known(&mut self, id: u64) {
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

    fn on_connect(&mut self, ev: &ConnectEvent) {
        let identity = self.identity(ev);
        let ip = from_v6_bytes(ev.addr);
        let action = Action::from_kernel(ev.action).unwrap_or(Action::Block);
        let rule = self.rule_name(ev.rule);
        let provider = self
            .ids
            .provider_name(ev.provider)
            .unwrap_or("unknown")
            .to_string();
        let api = self
            .catalog
            .provider(&provider)
            .and_then(|p| serde_json::to_value(p.api).ok())
            .and_then(|v| v.as_str().map(str::to_string));
        let record = Decision {
            time: record::rfc3339(record::boot_ns_to_wall(ev.header.boot_ns)),
            event: if ev.protocol == 17 || ev.hook == hook::SENDMSG {
                "udp"
            } else {
                "connect"
            },
            action,
            rule,
            decided_by: match ev.source {
                source::PROCESS => "process",
                source::CGROUP => "cgroup",
                source::FAIL_OPEN => "fail-open",
                _ => "default",
            },
            provider,
            api,
            destination: Destination {
                ip,
                port: ev.port,
                host: self.endpoints.names.get(&ip).cloned(),
            },
            identity,
            policy_generation: ev.generation,
        };
        let state = self
            .shared_policy
            .read()
            .expect("policy lock poisoned")
            .clone();
        for alert in watchdog::connect_alerts(&record, &state.policy, state.default_action()) {
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
        self.sink.write(&record);
    }

    /// Tells the kernel we are alive (fail_mode open counts from this).
    fn kernel_beat(&mut self) {
        if let Err(err) = self.maps.beat() {
            warn!("{err:#}");
        }
    }

    fn beat(&self, clean: bool) {
        if let Some(heartbeat) = &self.heartbeat
            && let Err(err) = heartbeat.beat(clean)
        {
            warn!(error = %err, "cannot write the heartbeat file; an enforcement gap may go unreported");
        }
    }

    /// Someone detaching our programs is reported once per program, and
    /// again if it happens again after they came back.
    fn check_tamper(&mut self) {
        let Some(attachments) = &self.attachments else {
            return;
        };
        let missing = attachments.missing();
        let new: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|name| !self.tampered.contains(name))
            .collect();
        if !new.is_empty() {
            error!(programs = %new.join(", "), "modelgate's programs were detached by someone else");
            let cgroup = self.settings.cgroup.display().to_string();
            self.alerts.send(watchdog::tamper_alert(&new, &cgroup));
        }
        self.tampered = missing;
    }

    fn identity(&mut self, ev: &ConnectEvent) -> Identity {
        self.identity_of(Who {
            tgid: ev.header.tgid,
            pid: ev.header.pid,
            uid: ev.uid,
            gid: ev.gid,
            comm: &ev.comm,
            cgroup_id: ev.cgroup_id,
        })
    }

    fn identity_of(&mut self, who: Who<'_>) -> Identity {
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
}

/// What the kernel told us about a process at a connect.
struct Who<'a> {
    tgid: u32,
    pid: u32,
    uid: u32,
    gid: u32,
    comm: &'a [u8; 16],
    cgroup_id: u64,
}

impl Agent {
    /// Everything the proxy needs to know about a redirected connection.
    fn describe(&mut self, redirect: &Redirect) -> ConnInfo {
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
        let ip = from_v6_bytes(redirect.addr);
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

    fn rule_name(&self, rule: u16) -> String {
        if rule == agent_common::RULE_DEFAULT {
            "default".to_string()
        } else {
            self.ids.rule_name(rule).unwrap_or("unknown").to_string()
        }
    }
}

/// One line per decision, with the identity record's fields flat, so the
/// journal (JSON) can be queried by any of them.
fn log_decision(record: &Decision) {
    let id = &record.identity;
    info!(
        event = record.event,
        action = %record.action,
        rule = %record.rule,
        decided_by = record.decided_by,
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

/// Reloads on any change under the policies directory, debounced: an
/// editor's save is several events.
fn watch_policies(
    dir: &std::path::Path,
) -> (Option<notify::RecommendedWatcher>, mpsc::Receiver<()>) {
    use notify::Watcher;
    let (tx, rx) = mpsc::channel::<()>(1);
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = raw_tx.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!(error = %err, dir = %dir.display(),
                "cannot watch the policies directory; reload with SIGHUP");
            None
        }
    };
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            while raw_rx.try_recv().is_ok() {}
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    (watcher, rx)
}

fn cgroup_facts<'a>(
    path: &'a str,
    info: &'a crate::identity::cgroup_path::CgroupInfo,
) -> CgroupFacts<'a> {
    CgroupFacts {
        path,
        unit: info.unit.as_deref(),
        container_id: info.container_id.as_deref(),
        runtime: info.container_runtime,
        pod_uid: info.pod_uid.as_deref(),
    }
}
