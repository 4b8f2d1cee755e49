//! Executable identity: vetting each file a process executes (digest,
//! memfd / deleted, dynamic loader) and telling the kernel's exec hook the
//! verdict for it, so the next exec of the same file is decided before the
//! program runs an instruction.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use agent_common::{ExeFile, ExeKey, ExeVerdict, PolicyEntry, exe_flags, exe_special, exe_status};
use anyhow::Result;
use tracing::{debug, warn};

use super::Agent;
use crate::{
    bypass,
    identity::exe::{self, DigestCache, ExeFacts},
    policy::{Policy, ProcFacts, compile::Compiled},
};

/// The rule name records show for the conservative verdict of a file the
/// agent had not vetted yet.
pub const UNVETTED_RULE: &str = "(unvetted executable)";
/// Dynamic loaders vetted up front: run directly, the program they load is
/// in their argv, so the kernel holds them unvetted until the agent looks.
const LOADERS: [&str; 6] = [
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux-armhf.so.3",
    "/lib/ld-linux.so.2",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
];
/// Vetted files remembered for rewriting their verdicts on a new policy.
const MAX_VETTED: usize = agent_common::limits::MAX_EXES as usize;

/// A file the exec hook knows, and what it is.
#[derive(Debug, Clone)]
pub struct Vetted {
    pub file: ExeFile,
    pub path: String,
    pub sha256: Option<String>,
    pub loader: bool,
}

pub fn key(file: &ExeFile) -> ExeKey {
    ExeKey {
        dev: file.dev,
        _pad: 0,
        ino: file.ino,
    }
}

/// Digests of the files the policy's literal `exe` paths name, so that a
/// copy of one matches the rule too.
pub fn literal_digests(policy: &mut Policy, digests: &mut DigestCache) {
    let mut found = HashMap::new();
    for path in policy.literal_exe_paths() {
        match digests.digest(Path::new(&path), None) {
            Some((_, digest)) => {
                found.insert(path, digest);
            }
            None => debug!(%path, "exe rule path cannot be read; it matches by path only"),
        }
    }
    policy.set_exe_digests(&found);
}

fn verdict(file: &ExeFile, flags: u32, entry: PolicyEntry) -> ExeVerdict {
    let has_entry = if Compiled::has_any_verdict(&entry) {
        exe_flags::HAS_ENTRY
    } else {
        0
    };
    ExeVerdict {
        flags: flags | has_entry,
        ctime_nsec: file.ctime_nsec,
        ctime_sec: file.ctime_sec,
        size: file.size,
        entry,
    }
}

impl Agent {
    /// Whether a file of this size could match a rule by digest: any size
    /// under an `exe_sha256` rule, else only the sizes of the files the
    /// literal `exe` paths name.
    fn digest_worth(&self) -> impl Fn(i64) -> bool + use<> {
        let any = self
            .compiled
            .policy
            .rules
            .iter()
            .any(|r| !r.matches.exe_sha256.is_empty());
        let sizes = self.rule_sizes.clone();
        move |size| any || sizes.contains(&size)
    }

    /// The kernel decides at exec when the policy names executables and
    /// the exec hook can read which file runs.
    pub(super) fn exe_rules_in_kernel(&self) -> bool {
        self.exe_identity && self.compiled.policy.has_exe_rules()
    }

    /// Writes the unvetted / anonymous entries and every vetted file's
    /// verdict for the current policy (after a load or reload).
    pub(super) fn sync_exe_verdicts(&mut self) -> Result<()> {
        // Sizes of the files rules name: only files of these sizes can be
        // their copies, so only those are hashed.
        self.rule_sizes.clear();
        for path in self.compiled.policy.literal_exe_paths() {
            if let Ok(meta) = std::fs::metadata(&path) {
                self.rule_sizes.insert(exe::exe_file(&meta).size);
            }
        }
        if !self.exe_rules_in_kernel() {
            self.maps.clear_exe_verdicts();
            return Ok(());
        }
        let rule = self.ids.rule(UNVETTED_RULE)?;
        let unvetted = self.compiled.unvetted_entry(rule);
        let anonymous = self.compiled.anonymous_entry(rule);
        let none = ExeFile::default();
        // A rule matching by digest alone or by a path glob can match a
        // new file of any size; a literal path's copy has its file's size.
        let any_size = self.compiled.policy.rules.iter().any(|r| {
            !r.matches.exe_sha256.is_empty() || r.matches.exe.iter().any(|g| g.literal().is_none())
        });
        let flags = if any_size { exe_flags::ANY_SIZE } else { 0 };
        self.maps
            .set_exe_special(exe_special::UNVETTED, verdict(&none, flags, unvetted))?;
        self.maps
            .set_exe_special(exe_special::ANONYMOUS, verdict(&none, 0, anonymous))?;
        self.maps.clear_exe_verdicts();
        // The files rules name are known before their first exec.
        for path in self.compiled.policy.literal_exe_paths() {
            if let Some((file, digest)) = self.digests.digest(Path::new(&path), None) {
                let loader = exe::is_loader(&path);
                self.vetted.insert(
                    key(&file),
                    Vetted {
                        file,
                        path,
                        sha256: Some(digest),
                        loader,
                    },
                );
            }
        }
        self.maps.set_exe_sizes(&self.rule_sizes)?;
        for path in LOADERS {
            if let Some(file) = loader_file(path) {
                self.vetted.insert(
                    key(&file),
                    Vetted {
                        file,
                        path: path.to_string(),
                        sha256: None,
                        loader: true,
                    },
                );
            }
        }
        // A file vetted without a digest (no rule could match it by one
        // then) that now could: forgotten, so its next exec is unvetted
        // and hashed.
        let worth = self.digest_worth();
        self.vetted
            .retain(|_, v| v.sha256.is_some() || v.loader || !worth(v.file.size));
        let all: Vec<Vetted> = self.vetted.values().cloned().collect();
        for vetted in &all {
            self.write_vetted(vetted)?;
        }
        Ok(())
    }

    fn write_vetted(&mut self, vetted: &Vetted) -> Result<()> {
        let value = if vetted.loader {
            verdict(&vetted.file, exe_flags::DEFER, PolicyEntry::EMPTY)
        } else {
            let facts = ProcFacts {
                exe: Some(&vetted.path),
                exe_sha256: vetted.sha256.as_deref(),
                ..ProcFacts::default()
            };
            verdict(&vetted.file, 0, self.compiled.exe_entry(&facts))
        };
        Ok(self.maps.set_exe_verdict(key(&vetted.file), &value)?)
    }

    /// An exec seen: find out what runs (digest of the very file the kernel
    /// saw, memfd, the program behind a loader), record it on the process
    /// and give the kernel the file's verdict for its next exec.
    pub(super) fn vet_exec(&mut self, tgid: u32, file: &ExeFile, status: u32, args: &[String]) {
        let Some(info) = self.procs.lookup(tgid).cloned() else {
            return;
        };
        let mut exe_path = info.exe.clone();
        // The common case: a file the kernel already had our verdict for.
        if status == exe_status::VETTED
            && let Some(known) = self.vetted.get(&key(file))
            && exe::same_version(&known.file, file)
            && !known.loader
        {
            let facts = ExeFacts {
                exe_sha256: known.sha256.clone(),
                ..ExeFacts::default()
            };
            self.procs.set_exe(tgid, None, facts);
            return;
        }
        let anonymous = exe::is_anonymous(file, exe_path.as_deref());
        let exe_rules = self.compiled.policy.has_exe_rules();
        let worth = self.digest_worth();
        let mut facts = ExeFacts {
            anonymous_exec: anonymous,
            ..ExeFacts::default()
        };
        if exe_rules {
            // The very file the kernel saw, through the process while it
            // lives; else its path, if that still names the same version.
            let proc_exe = PathBuf::from(format!("/proc/{tgid}/exe"));
            let want = (file.ino != 0).then_some(file);
            let mut digest = self.digests.digest_if(&proc_exe, want, &worth);
            if digest.is_none() && !anonymous {
                digest = exe_path
                    .as_deref()
                    .and_then(|p| self.digests.digest_if(Path::new(p), want, &worth));
            }
            facts.exe_sha256 = digest.map(|(_, d)| d);
        }
        let loader = exe_path.as_deref().is_some_and(exe::is_loader);
        if self.exe_rules_in_kernel() && !anonymous && file.ino != 0 {
            let vetted = Vetted {
                file: *file,
                path: exe_path.clone().unwrap_or_default(),
                sha256: facts.exe_sha256.clone(),
                loader,
            };
            if let Err(err) = self.write_vetted(&vetted) {
                warn!("{err:#}");
            }
            if self.vetted.len() >= MAX_VETTED {
                self.vetted.clear();
            }
            self.vetted.insert(key(file), vetted);
        }
        if loader && let Some(program) = exe::loader_program(args) {
            // The loader is only the means: the identity is the program.
            facts.exe_loader = exe_path.take();
            if exe_rules {
                let path = exe::program_path(tgid, program);
                facts.exe_sha256 = self.digests.digest_if(&path, None, &worth).map(|(_, d)| d);
            }
            exe_path = Some(absolute(tgid, program));
        }
        self.procs.set_exe(tgid, exe_path, facts);
        if anonymous && self.governs(info.cgroup_id) {
            let identity = self.identity_of(super::lookup::Who {
                tgid,
                pid: tgid,
                uid: info.uid,
                gid: info.gid,
                comm: &comm_bytes(&info.comm),
                cgroup_id: info.cgroup_id,
            });
            self.alerts.send(bypass::anonymous_exec_alert(&identity));
        }
    }

    /// The cgroup is the one the programs are attached to, or below it.
    fn governs(&self, cgroup_id: u64) -> bool {
        let Some(entry) = self.cgroups.get(cgroup_id) else {
            return false;
        };
        let Ok(root) = self
            .settings
            .cgroup
            .strip_prefix(&self.settings.cgroup_mount)
        else {
            return false;
        };
        let root = format!("/{}", root.display());
        let root = root.trim_end_matches('/');
        entry.path == root
            || root.is_empty()
            || entry
                .path
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// A file a literal `exe` names changed (a package upgrade): its new
    /// digest and size, for the agent, the proxy and the exec hook.
    pub(super) fn refresh_rule_files(&mut self) {
        let now: HashMap<String, ExeFile> = self
            .compiled
            .policy
            .literal_exe_paths()
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::metadata(&path).ok()?;
                Some((path, exe::exe_file(&meta)))
            })
            .collect();
        let changed = now.len() != self.rule_files.len()
            || now.iter().any(|(path, file)| {
                self.rule_files
                    .get(path)
                    .is_none_or(|old| !exe::same_version(old, file))
            });
        if !changed {
            return;
        }
        let first = self.rule_files.is_empty();
        self.rule_files = now;
        if first {
            // Just loaded: the digests are current.
            return;
        }
        literal_digests(&mut self.compiled.policy, &mut self.digests);
        {
            let mut shared = self.shared_policy.write().expect("policy lock poisoned");
            let mut policy = shared.policy.clone();
            literal_digests(&mut policy, &mut self.digests);
            *shared = std::sync::Arc::new(crate::policy::PolicyState {
                policy,
                prices: shared.prices.clone(),
                default_override: shared.default_override,
            });
        }
        debug!("a file an exe rule names changed; its digest was taken again");
        if let Err(err) = self.apply_policy() {
            warn!("{err:#}");
        }
    }

    /// A process the agent knew before it vetted anything (older than the
    /// agent): its digest, from /proc, when a rule could match by digest.
    pub(super) fn vet_running(&mut self, tgid: u32) {
        let Some(info) = self.procs.lookup(tgid) else {
            return;
        };
        if info.exe_facts.exe_sha256.is_some() || info.exited.is_some() {
            return;
        }
        let exe_path = info.exe.clone();
        let proc_exe = PathBuf::from(format!("/proc/{tgid}/exe"));
        let worth = self.digest_worth();
        let Some((file, digest)) = self.digests.digest_if(&proc_exe, None, worth) else {
            return;
        };
        let facts = ExeFacts {
            exe_sha256: Some(digest),
            anonymous_exec: exe::is_anonymous(&file, exe_path.as_deref()),
            exe_loader: None,
        };
        self.procs.set_exe(tgid, None, facts);
    }
}

/// A loader's file identity, without hashing it.
fn loader_file(path: &str) -> Option<ExeFile> {
    let meta = std::fs::metadata(path).ok()?;
    Some(exe::exe_file(&meta))
}

/// `program` as the loader sees it, made absolute from the process's cwd.
fn absolute(tgid: u32, program: &str) -> String {
    if program.starts_with('/') {
        return program.to_string();
    }
    match std::fs::read_link(format!("/proc/{tgid}/cwd")) {
        Ok(cwd) => cwd.join(program).to_string_lossy().into_owned(),
        Err(_) => program.to_string(),
    }
}

fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (dst, src) in out.iter_mut().zip(comm.bytes().take(15)) {
        *dst = src;
    }
    out
}
