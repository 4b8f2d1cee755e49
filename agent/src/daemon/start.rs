//! Start-up: loads the catalog and policy, attaches the kernel programs,
//! starts the proxy, the writers and the control socket, then runs the
//! select loop until a signal stops it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use agent_common::names;
use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use super::{
    Agent, DRAIN_BATCH, KERNEL_BEAT, OTLP_FLUSH, SHUTDOWN_GRACE, Settings, TICK, exec,
    status::Facts,
};
use crate::{
    alerts::{self},
    audit,
    budget::{Budgets, Prices},
    bypass,
    catalog::{
        Catalog,
        learned::Learned,
        resolver::{self, Resolved, ResolvedHosts},
    },
    config::FailMode,
    control,
    ebpf::{self, endpoints::EndpointSet, maps::KernelMaps},
    heartbeat::Heartbeat,
    identity::{cgroups::CgroupIndex, procs::ProcCache, users::Users},
    live::Live,
    metrics::Metrics,
    notify::Notifier,
    policy::{
        Policy, PolicyState,
        compile::{Compiled, Ids},
    },
    proxy::{Control, Describe, Proxy, ProxyLinks, SharedPolicy},
    usage,
};

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
    let (sink, sink_writer) = crate::sink::open(&settings.events)?;
    metrics.watch_queue("decisions", sink.dropped.clone());

    let mut agent = Agent {
        maps: Box::new(maps),
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
        agent.alerts.send(bypass::gap_alert(&gap, kernel));
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
    // Every decision record is on disk (or counted lost) before we say we
    // stopped.
    if let Err(err) = sink_writer.await {
        error!("the decision record writer failed: {err}");
    }
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

/// Reloads on any change under the policies directory, debounced: an
/// editor's save is several events.
pub(super) fn watch_policies(
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
