//! The cgroup v2 hierarchy: where it is mounted and which path has which id.
//!
//! A cgroup v2 id (what bpf_get_current_cgroup_id returns) is the inode
//! number of its directory, so one walk of the mount maps ids to paths.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::cgroup_path::{self, CgroupInfo};

/// Bound on the walk, so a pathological hierarchy cannot stall the agent.
const MAX_CGROUPS: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo to find the cgroup2 mount")]
    MountInfo(#[source] std::io::Error),
    #[error(
        "no cgroup2 file system is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) \
         or pass --cgroup PATH"
    )]
    NoCgroup2,
    #[error("more than {MAX_CGROUPS} cgroups under {}; attribution by cgroup is incomplete", .0.display())]
    TooMany(PathBuf),
}

/// Finds the cgroup2 mount in /proc/self/mountinfo (on hybrid hosts it is
/// not at /sys/fs/cgroup).
pub fn find_mount() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    parse_mountinfo(&text).ok_or(CgroupError::NoCgroup2)
}

fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        // "... mountpoint opts [optional...] - fstype source superopts"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

fn unescape_octal(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\'
            && let Some(digits) = octal
            && digits.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let code = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone)]
pub struct CgroupEntry {
    /// Relative to the mount, starting with `/`.
    pub path: String,
    pub info: CgroupInfo,
}

#[derive(Debug)]
pub struct CgroupIndex {
    mount: PathBuf,
    by_id: HashMap<u64, CgroupEntry>,
}

impl CgroupIndex {
    pub fn new(mount: PathBuf) -> CgroupIndex {
        CgroupIndex {
            mount,
            by_id: HashMap::new(),
        }
    }

    pub fn get(&self, id: u64) -> Option<&CgroupEntry> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &CgroupEntry)> {
        self.by_id.iter().map(|(id, e)| (*id, e))
    }

    /// Walks the hierarchy again. Returns whether the set of cgroups changed.
    pub fn rescan(&mut self) -> Result<bool, CgroupError> {
        let mut found = HashMap::new();
        let mut stack = vec![self.mount.clone()];
        while let Some(dir) = stack.pop() {
            if found.len() >= MAX_CGROUPS {
                return Err(CgroupError::TooMany(self.mount.clone()));
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue; // removed while we walked
            };
            let rel = dir.strip_prefix(&self.mount).unwrap_or(Path::new(""));
            let path = format!("/{}", rel.display());
            let info = cgroup_path::parse(&path);
            found.insert(meta.ino(), CgroupEntry { path, info });
            let Ok(children) = std::fs::read_dir(&dir) else {
                continue;
            };
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(child.path());
                }
            }
        }
        let changed =
            found.len() != self.by_id.len() || found.keys().any(|id| !self.by_id.contains_key(id));
        self.by_id = found;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let text = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
44 35 0:39 / /sys/fs/cgroup/unified rw,relatime shared:17 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn unescapes_spaces_in_mount_points() {
        assert_eq!(unescape_octal(r"/mnt/my\040cgroup"), "/mnt/my cgroup");
        assert_eq!(unescape_octal(r"/a\"), r"/a\");
    }
}
