//! Pins under bpffs, so enforcement outlives the agent process: the maps
//! and the links stay in the kernel while the agent is down (a crash, a
//! restart, an upgrade), and the next agent adopts them. Cgroup links are
//! switched to the new programs in place (BPF_LINK_UPDATE), so no connect
//! ever meets a cgroup without our hooks; tracepoint links, which cannot be
//! updated, are replaced make-before-break.

use std::{
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use agent_common::names;
use aya::{EbpfLoader, maps::MapInfo};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::layout::STATE_DIR as DEFAULT_STATE_DIR;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/modelgate";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub type Result<T, E = PinError> = std::result::Result<T, E>;

/// Pins could not be made, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{doing} {}{hint}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        /// What to do about it, when there is something.
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "bpffs is not mounted at {BPFFS} and mounting it failed; run `mount -t bpf bpf {BPFFS}`, \
         or set pin_dir in agent.yaml to a directory on bpffs"
    )]
    NoBpffs(#[source] std::io::Error),
    /// A call on an open link.
    #[error("{0}")]
    Link(&'static str, #[source] std::io::Error),
    #[error("parsing the embedded eBPF object")]
    Object(#[source] aya_obj::ParseError),
    #[error("the pin path {} holds a NUL byte", .0.display())]
    NulInPath(PathBuf),
}

fn io_error(
    doing: &'static str,
    path: &Path,
    hint: &'static str,
) -> impl FnOnce(std::io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Io {
        doing,
        path,
        hint,
        source,
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PinError::NulInPath(path.to_path_buf()))
}

/// The maps whose contents the kernel programs need while no agent runs,
/// or that a restarted agent should find again (counters, the events the
/// kernel queued while it was down).
const STATE_MAPS: [&str; 17] = [
    names::MAP_PORTS,
    names::MAP_ENDPOINTS,
    names::MAP_CIDRS,
    names::MAP_CGROUP_POLICY,
    names::MAP_PROC_POLICY,
    names::MAP_CONFIG,
    names::MAP_COUNTERS,
    names::MAP_EVENTS,
    names::MAP_PENDING_ARGV,
    names::MAP_REDIRECT_COOKIE,
    names::MAP_REDIRECT_PORT,
    names::MAP_DNS_NAMES,
    names::MAP_ARGV_SCRATCH,
    names::MAP_HEARTBEAT,
    names::MAP_EXE_POLICY,
    names::MAP_EXE_SPECIAL,
    names::MAP_EXE_SIZES,
];

/// The agent with the default state directory pins at the default place;
/// one with its own state directory pins beside the others, named after
/// it, so agents (and tests) side by side never adopt each other's pins.
pub fn pin_dir(configured: Option<&Path>, state_dir: &Path) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    if state_dir == Path::new(DEFAULT_STATE_DIR) {
        return PathBuf::from(DEFAULT_PIN_DIR);
    }
    let absolute = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let digest = Sha256::digest(absolute.as_os_str().as_bytes());
    let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    PathBuf::from(format!("{DEFAULT_PIN_DIR}-{tag}"))
}

/// A pin directory, ready for this build's object.
pub struct Pins {
    root: PathBuf,
    /// The pinned maps are this build's: the new programs use them as
    /// they are, and links can be switched in place.
    pub compatible: bool,
    /// There were pins: this agent takes over from a previous one.
    pub adopting: bool,
}

impl Pins {
    /// Mounts bpffs if needed, creates the directory, and checks the maps
    /// pinned there against `object`'s definitions. Maps of another layout
    /// (an upgrade that changed one) are unpinned: the old programs keep
    /// theirs until their links are replaced.
    pub fn open(root: &Path, object: &[u8]) -> Result<Pins> {
        ensure_bpffs(root)?;
        let maps = root.join("maps");
        std::fs::create_dir_all(&maps)
            .and_then(|()| std::fs::create_dir_all(root.join("links")))
            .map_err(io_error(
                "creating",
                root,
                " (it must be on bpffs; set pin_dir in agent.yaml)",
            ))?;
        let adopting = STATE_MAPS.iter().any(|name| maps.join(name).exists());
        let mismatches = mismatched_maps(&maps, object)?;
        if !mismatches.is_empty() {
            warn!(
                maps = %mismatches.join(", "),
                "the pinned maps have another layout than this build's (an upgrade changed \
                 them): starting with fresh maps; the previous programs keep enforcing until \
                 they are replaced"
            );
            for name in STATE_MAPS {
                let _ = std::fs::remove_file(maps.join(name));
            }
        }
        Ok(Pins {
            root: root.to_path_buf(),
            compatible: adopting && mismatches.is_empty(),
            adopting,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every state map is created pinned, or opened from its pin.
    pub fn configure<'a>(&self, loader: &mut EbpfLoader<'a>) {
        for name in STATE_MAPS {
            loader.map_pin_path(name, self.root.join("maps").join(name));
        }
    }

    pub fn link_path(&self, program: &str) -> PathBuf {
        self.root.join("links").join(program)
    }
}

/// The object's definition of each state map against the pinned one's.
fn mismatched_maps(dir: &Path, object: &[u8]) -> Result<Vec<String>> {
    let parsed = aya_obj::Object::parse(object).map_err(PinError::Object)?;
    let mut mismatched = Vec::new();
    for name in STATE_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = parsed.maps.get(name) else {
            mismatched.push(name.to_string());
            continue;
        };
        let same = MapInfo::from_pin(&path).is_ok_and(|info| {
            info.map_type().is_ok_and(|t| t as u32 == def.map_type())
                && info.key_size() == def.key_size()
                && info.value_size() == def.value_size()
                && info.max_entries() == def.max_entries()
        });
        if !same {
            mismatched.push(name.to_string());
        }
    }
    Ok(mismatched)
}

/// Pins need bpffs at /sys/fs/bpf, which minimal hosts do not mount.
fn ensure_bpffs(root: &Path) -> Result<()> {
    if !root.starts_with(BPFFS) || is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    super::mount("bpf", BPFFS).map_err(PinError::NoBpffs)?;
    info!("mounted bpffs at {BPFFS} (it was not mounted)");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and an out struct of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// A pinned link, opened: holding it keeps the link (and its program)
/// attached even once its pin is gone.
pub struct OpenLink {
    fd: OwnedFd,
}

impl OpenLink {
    /// `None` when nothing is pinned at `path`.
    pub fn open(path: &Path) -> Result<Option<OpenLink>> {
        if !path.exists() {
            return Ok(None);
        }
        let c_path = c_path(path)?;
        let mut attr = ObjGetAttr {
            pathname: c_path.as_ptr() as u64,
            ..Default::default()
        };
        let fd =
            bpf(BPF_OBJ_GET, &mut attr).map_err(io_error("opening the pinned link", path, ""))?;
        // SAFETY: BPF_OBJ_GET returned a new fd that we own.
        Ok(Some(OpenLink {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        }))
    }

    /// Pins the link at `path` (again).
    pub fn pin(&self, path: &Path) -> Result<()> {
        let c_path = c_path(path)?;
        let mut attr = ObjGetAttr {
            pathname: c_path.as_ptr() as u64,
            bpf_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_OBJ_PIN, &mut attr).map_err(io_error("pinning a link at", path, ""))?;
        Ok(())
    }

    /// The link's type and, for a cgroup link, its cgroup's id.
    pub fn info(&self) -> Result<LinkInfo> {
        let mut buf = [0u8; 256];
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: buf.len() as u32,
            info: buf.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
            .map_err(|e| PinError::Link("reading a pinned link's info", e))?;
        let u32_at = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        Ok(LinkInfo {
            link_type: u32_at(0),
            id: u32_at(4),
            // struct bpf_link_info: type, id, prog_id, then an 8-aligned
            // union whose cgroup member starts with the cgroup id.
            cgroup_id: u64::from_ne_bytes(buf[16..24].try_into().expect("8 bytes")),
        })
    }

    /// Switches the link to `program` atomically: every connect meets
    /// either the old program or the new one.
    pub fn update(&self, program: impl AsFd) -> Result<()> {
        let mut attr = UpdateAttr {
            link_fd: self.fd.as_raw_fd() as u32,
            new_prog_fd: program.as_fd().as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        bpf(BPF_LINK_UPDATE, &mut attr)
            .map_err(|e| PinError::Link("switching a pinned link to the new program", e))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LinkInfo {
    pub link_type: u32,
    /// The kernel's id of the link, as `bpftool link` shows it.
    pub id: u32,
    pub cgroup_id: u64,
}

/// `enum bpf_link_type`'s BPF_LINK_TYPE_CGROUP.
pub const LINK_TYPE_CGROUP: u32 = 3;

/// The id the kernel gives a cgroup: its directory's inode on cgroup2.
pub fn cgroup_id(cgroup: &Path) -> Result<u64> {
    Ok(std::fs::metadata(cgroup)
        .map_err(io_error("reading cgroup", cgroup, ""))?
        .ino())
}

/// Removes every pin under `root`: the links go (their programs are
/// detached once nothing else holds them), then the maps. Returns how many
/// pins were removed.
pub fn remove_all(root: &Path) -> Result<usize> {
    let mut removed = 0;
    for sub in ["links", "maps"] {
        let dir = root.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path()).map_err(io_error("removing", &entry.path(), ""))?;
            removed += 1;
        }
        let _ = std::fs::remove_dir(&dir);
    }
    if root.exists() {
        std::fs::remove_dir(root).map_err(io_error(
            "removing",
            root,
            " (something else is in it)",
        ))?;
    }
    Ok(removed)
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
struct UpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a correctly laid out prefix of union bpf_attr for
    // `cmd`, and every pointer in it outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_dir_pins_at_the_default_place_and_others_apart() {
        assert_eq!(
            pin_dir(None, Path::new(DEFAULT_STATE_DIR)),
            Path::new(DEFAULT_PIN_DIR)
        );
        let a = pin_dir(None, Path::new("/tmp/a"));
        let b = pin_dir(None, Path::new("/tmp/b"));
        assert_ne!(a, b);
        assert!(a.starts_with(BPFFS), "{}", a.display());
        assert_eq!(a, pin_dir(None, Path::new("/tmp/a")), "stable");
        assert_eq!(
            pin_dir(Some(Path::new("/sys/fs/bpf/x")), Path::new("/tmp/a")),
            Path::new("/sys/fs/bpf/x")
        );
    }

    #[test]
    fn every_state_map_is_in_the_object() {
        let parsed = aya_obj::Object::parse(super::super::OBJECT).unwrap();
        for name in STATE_MAPS {
            assert!(parsed.maps.contains_key(name), "{name} missing");
        }
    }
}
