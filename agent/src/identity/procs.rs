//! The process cache: exe, cmdline and parent of every process, fed by the
//! kernel's exec/exit events so that a process that is gone by the time its
//! connect event is read is still attributed with its exe.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{PARENT_CHAIN, Parent, cmdline, exe::ExeFacts};

/// How long an exited process stays in the cache: events queued behind its
/// exit still find it.
const KEEP_EXITED: Duration = Duration::from_secs(30);
/// Upper bound on cached processes; the oldest exited ones go first.
const MAX_ENTRIES: usize = 262_144;

#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub tgid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// What the executable is (digest, memfd, loader), once vetted.
    pub exe_facts: ExeFacts,
    pub cmdline: Option<String>,
    pub cgroup_id: u64,
    pub exited: Option<Instant>,
}

#[derive(Debug)]
pub struct ProcCache {
    /// The cgroup2 mount, to turn /proc/PID/cgroup paths into cgroup ids.
    mount: PathBuf,
    by_tgid: HashMap<u32, ProcInfo>,
}

impl ProcCache {
    pub fn new(mount: PathBuf) -> ProcCache {
        ProcCache {
            mount,
            by_tgid: HashMap::new(),
        }
    }

    /// Seeds the cache with every process running now.
    pub fn scan(&mut self) {
        let Ok(all) = procfs::process::all_processes() else {
            return;
        };
        for process in all.flatten() {
            if let Some(info) = read_proc(&self.mount, process.pid as u32) {
                self.by_tgid.insert(info.tgid, info);
            }
        }
    }

    /// An exec: the kernel's file name is authoritative for what ran even if
    /// /proc is already gone; /proc adds the resolved exe, argv and parent.
    pub fn on_exec(&mut self, mut info: ProcInfo) {
        // Only what the kernel's event lacks: the parent and the resolved
        // exe (uid, gid, cgroup and argv came with it). An exec storm makes
        // this the agent's hottest path.
        if let Some(live) = read_exec_facts(info.tgid) {
            // /proc/PID/exe resolves symlinks and interpreters' scripts.
            info.exe = live.exe.or(info.exe);
            // The kernel's argv is what was exec'd; /proc may already show
            // a rewritten title. /proc fills in when the kernel had none.
            if info.cmdline.is_none() {
                info.cmdline = read_cmdline(info.tgid);
            }
            info.ppid = live.ppid.or(info.ppid);
        } else if let Some(previous) = self.by_tgid.get(&info.tgid) {
            info.ppid = info.ppid.or(previous.ppid);
        }
        self.by_tgid.insert(info.tgid, info);
    }

    /// What vetting found: the program (the loaded one, for a loader run
    /// directly) and its facts.
    pub fn set_exe(&mut self, tgid: u32, exe: Option<String>, facts: ExeFacts) {
        if let Some(info) = self.by_tgid.get_mut(&tgid) {
            info.exe = exe.or(info.exe.take());
            info.exe_facts = facts;
        }
    }

    pub fn on_exit(&mut self, tgid: u32) {
        if let Some(info) = self.by_tgid.get_mut(&tgid) {
            info.exited = Some(Instant::now());
        }
    }

    /// The cache entry for `tgid`, reading /proc if the kernel told us
    /// nothing about it (processes older than the agent, or lost events).
    pub fn lookup(&mut self, tgid: u32) -> Option<&ProcInfo> {
        if !self.by_tgid.contains_key(&tgid) {
            let info = read_proc(&self.mount, tgid)?;
            self.by_tgid.insert(tgid, info);
        }
        self.by_tgid.get(&tgid)
    }

    pub fn parents(&self, ppid: Option<u32>) -> Vec<Parent> {
        let mut chain = Vec::new();
        let mut next = ppid;
        while let Some(pid) = next {
            if chain.len() >= PARENT_CHAIN || pid == 0 {
                break;
            }
            let info = self.by_tgid.get(&pid);
            chain.push(Parent {
                pid,
                exe: info.and_then(|i| i.exe.clone()),
            });
            next = info.and_then(|i| i.ppid);
        }
        chain
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProcInfo> {
        self.by_tgid.values().filter(|p| p.exited.is_none())
    }

    /// Drops exited processes past their grace period, and the oldest exited
    /// ones if the cache is over its bound.
    pub fn purge(&mut self) {
        let now = Instant::now();
        self.by_tgid.retain(|_, p| {
            p.exited
                .is_none_or(|at| now.duration_since(at) < KEEP_EXITED)
        });
        if self.by_tgid.len() > MAX_ENTRIES {
            let mut exited: Vec<(u32, Instant)> = self
                .by_tgid
                .iter()
                .filter_map(|(tgid, p)| p.exited.map(|at| (*tgid, at)))
                .collect();
            exited.sort_by_key(|(_, at)| *at);
            let excess = self.by_tgid.len() - MAX_ENTRIES;
            for (tgid, _) in exited.into_iter().take(excess) {
                self.by_tgid.remove(&tgid);
            }
        }
    }
}

struct ExecFacts {
    ppid: Option<u32>,
    exe: Option<String>,
}

/// The parent (from /proc/PID/stat) and the exe link; None when gone.
fn read_exec_facts(tgid: u32) -> Option<ExecFacts> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    // "pid (comm) state ppid ...": the comm may hold spaces and ')'.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok());
    let exe = std::fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    Some(ExecFacts { ppid, exe })
}

fn read_cmdline(tgid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{tgid}/cmdline")).unwrap_or_default();
    let args = cmdline::split_raw(&raw);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (!refs.is_empty()).then(|| cmdline::mask_cmdline(&refs, cmdline::DEFAULT_MAX_LEN))
}

/// Everything /proc can tell about a live process; None when it is gone.
pub fn read_proc(mount: &Path, tgid: u32) -> Option<ProcInfo> {
    let process = procfs::process::Process::new(tgid as i32).ok()?;
    let stat = process.stat().ok()?;
    let status = process.status().ok();
    let exe = process.exe().ok().map(|p| p.to_string_lossy().into_owned());
    let cmdline = read_cmdline(tgid);
    // The unified hierarchy's line is "0::/path".
    let cgroup_id = std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))
        .ok()
        .and_then(|text| {
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            let dir = mount.join(path.trim_start_matches('/'));
            std::fs::metadata(dir).ok().map(|m| m.ino())
        });
    Some(ProcInfo {
        tgid,
        ppid: Some(stat.ppid as u32),
        uid: status.as_ref().map(|s| s.euid).unwrap_or(0),
        gid: status.as_ref().map(|s| s.egid).unwrap_or(0),
        comm: stat.comm,
        exe,
        exe_facts: ExeFacts::default(),
        cmdline,
        cgroup_id: cgroup_id.unwrap_or(0),
        exited: None,
    })
}
