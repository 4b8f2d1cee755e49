//! cgroup v2 helpers: finding the mount, and child cgroups that remove
//! themselves.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The cgroup2 mount point, from /proc/self/mountinfo (it is
/// `/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn mount() -> Result<PathBuf> {
    let text = fs::read_to_string(MOUNTINFO).with_context(|| format!("reading {MOUNTINFO}"))?;
    parse_cgroup2_mount(&text).with_context(|| {
        format!(
            "no cgroup2 filesystem in {MOUNTINFO}: modelgate attaches its programs to a cgroup v2 \
             hierarchy\nhint: mount one with `mount -t cgroup2 none /sys/fs/cgroup` (or boot with \
             systemd.unified_cgroup_hierarchy=1)"
        )
    })
}

/// The first mount with filesystem type `cgroup2`. A mountinfo line is
/// `id parent maj:min root mountpoint options [optional...] - fstype source superopts`.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape(p)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, b| acc.wrapping_mul(8) + (b - b'0')),
                );
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A child cgroup created by us and removed on drop, after killing any
/// process still in it.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    pub fn create(parent: &Path, name: &str) -> Result<ChildCgroup> {
        let path = parent.join(name);
        fs::create_dir(&path)
            .with_context(|| format!("creating the cgroup {} (are you root?)", path.display()))?;
        Ok(ChildCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file that moves a process into this cgroup when a pid is written.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if let Err(err) = remove(&self.path) {
            eprintln!("xtask: warning: {err:#}");
        }
    }
}

/// Kills every process in the cgroup at `path`, then removes it.
pub fn remove(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids(path);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "processes {pids:?} are still in {} after SIGKILL; remove it by hand with \
                 `rmdir {}`",
                path.display(),
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    // A cgroup whose last process just exited can report EBUSY for a moment.
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if Instant::now() > deadline => {
                return Err(err).with_context(|| {
                    format!(
                        "removing the cgroup {}; try `rmdir {}`",
                        path.display(),
                        path.display()
                    )
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn pids(path: &Path) -> Vec<libc::pid_t> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hybrid_mount() {
        let text = "25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n\
            31 25 0:27 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n\
            42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_the_unified_mount_and_unescapes() {
        let text = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = "35 24 0:30 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(spaced),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn v1_only_has_no_cgroup2() {
        let text = "42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_mount(text), None);
        assert_eq!(parse_cgroup2_mount(""), None);
    }
}
