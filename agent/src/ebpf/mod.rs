//! Loading and attaching the kernel programs.

pub mod btf;
pub mod endpoints;
mod error;
pub mod events;
pub mod maps;
pub mod pins;
pub mod tamper;
mod tracefmt;

use std::{fs::File, path::Path};

use agent_common::names;
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, ProgramFd,
        SockOps, TracePoint, links::FdLink,
    },
};
use tracing::{debug, error, warn};

pub use self::error::{AttachError, EbpfError, MapsError};
use self::pins::{OpenLink, Pins};

pub type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// The object built by build.rs from agent-ebpf.
#[cfg(not(fuzzing))]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modelgate-ebpf"));
/// Fuzz builds (cargo-fuzz sets `--cfg fuzzing`) only drive parsers and
/// never load programs, so `cargo xtask fuzz` skips building them
/// (`AYA_BUILD_SKIP`), which saves CI a kernel build.
#[cfg(fuzzing)]
static OBJECT: &[u8] = &[];

const TRACEFS: &str = "/sys/kernel/tracing";

/// The loaded programs. Their links are pinned: dropping this (the agent
/// stopping) leaves them attached, enforcing what the maps say.
pub struct Programs {
    pub ebpf: Ebpf,
    execve_argv: bool,
    /// The kernel reads executables' identity at exec (BTF offsets found).
    pub exe_identity: bool,
    pub pins: Pins,
}

/// What attaching found and did, for the log and `modelgate status`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attached {
    /// Links switched to the new programs in place.
    pub switched: usize,
    /// Links made (and pinned) anew; any old ones replaced after.
    pub attached: usize,
}

/// Loads the programs and maps; nothing is attached yet, so the agent can
/// fill the maps first and never expose a half-configured policy. The
/// state maps are pinned under `pin_dir`, or reopened from there.
pub fn load(pin_dir: &Path) -> Result<Programs> {
    raise_memlock();
    ensure_tracefs()?;
    let pins = Pins::open(pin_dir, OBJECT)?;
    let offsets = tracefmt::read(Path::new(TRACEFS))?;
    let (exe_offsets, missing) = btf::read_exe_offsets();
    if let Some(why) = missing {
        warn!(
            "{why}: the kernel cannot tell which file a process executes, so exe rules \
             apply only once the agent has seen the exec (a fast program may connect first)"
        );
    }
    let mut loader = EbpfLoader::new();
    pins.configure(&mut loader);
    let ebpf = loader
        .override_global(names::GLOBAL_EXEC_FILENAME, &offsets.exec_filename, true)
        .override_global(
            names::GLOBAL_EXIT_GROUP_DEAD,
            &offsets.exit_group_dead,
            true,
        )
        .override_global(
            names::GLOBAL_FORK_PARENT_PID,
            &offsets.fork_parent_pid,
            true,
        )
        .override_global(names::GLOBAL_FORK_CHILD_PID, &offsets.fork_child_pid, true)
        .override_global(names::GLOBAL_EXECVE_ARGV, &offsets.execve_argv, true)
        .override_global(names::GLOBAL_EXE_OFFSETS, &exe_offsets, true)
        .load(OBJECT)
        .map_err(EbpfError::Load)?;
    Ok(Programs {
        ebpf,
        execve_argv: offsets.execve_argv != 0,
        exe_identity: exe_offsets.task_mm != 0,
        pins,
    })
}

impl Programs {
    /// Attaches the tracepoints (host-wide) and the socket hooks at `cgroup`
    /// (that cgroup and everything below it), taking over the links a
    /// previous agent pinned.
    pub fn attach(&mut self, cgroup: &Path) -> Result<Attached> {
        let mut done = Attached::default();
        let mut tracepoints = vec![
            (names::PROG_EXEC, "sched", "sched_process_exec"),
            (names::PROG_EXIT, "sched", "sched_process_exit"),
            (names::PROG_FORK, "sched", "sched_process_fork"),
        ];
        if self.execve_argv {
            tracepoints.push((names::PROG_EXECVE_ARGS, "syscalls", "sys_enter_execve"));
        } else {
            warn!(
                "no syscalls/sys_enter_execve tracepoint: command lines come from /proc, \
                 and processes that exit at once are recorded without one"
            );
        }
        for (program, category, name) in tracepoints {
            let path = self.pins.link_path(program);
            let tp: &mut TracePoint = program_mut(&mut self.ebpf, program)?;
            tp.load()
                .map_err(|source| EbpfError::Rejected { program, source })?;
            // Perf links cannot be switched to another program: the new one
            // goes in beside the old, which goes once the new is pinned.
            replace_pin(&path, || {
                let attach_error = |source: AttachError| EbpfError::Attach {
                    program,
                    target: format!("tracepoint {category}/{name}"),
                    source,
                };
                let id = tp
                    .attach(category, name)
                    .map_err(|e| attach_error(e.into()))?;
                let link = tp.take_link(id).map_err(|e| attach_error(e.into()))?;
                match FdLink::try_from(link) {
                    Ok(link) => pin(link, &path),
                    // A kernel without perf bpf_links: attached for as long
                    // as the agent runs, as before pinning existed.
                    Err(_) => {
                        debug!(program, "tracepoint link cannot be pinned on this kernel");
                        Ok(())
                    }
                }
            })?;
            done.attached += 1;
        }
        let cgroup_fd = File::open(cgroup).map_err(|source| EbpfError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        let cgroup_id = pins::cgroup_id(cgroup)?;
        for program in [
            names::PROG_CONNECT4,
            names::PROG_CONNECT6,
            names::PROG_SENDMSG4,
            names::PROG_SENDMSG6,
            names::PROG_GETPEERNAME4,
            names::PROG_GETPEERNAME6,
        ] {
            let prog: &mut CgroupSockAddr = program_mut(&mut self.ebpf, program)?;
            prog.load()
                .map_err(|source| EbpfError::Rejected { program, source })?;
            let fd = program_fd(program, prog.fd())?;
            place(
                &self.pins,
                program,
                cgroup,
                cgroup_id,
                fd,
                &mut done,
                || {
                    // On kernels >= 5.7 aya attaches with a bpf_link, which
                    // always coexists with other programs on the cgroup and
                    // rejects any attach flag: `Single` means "no flags" there.
                    let id = prog.attach(&cgroup_fd, CgroupAttachMode::Single)?;
                    Ok(FdLink::try_from(prog.take_link(id)?)?)
                },
            )?;
        }
        for (program, direction) in [
            (names::PROG_DNS, CgroupSkbAttachType::Ingress),
            (names::PROG_EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let prog: &mut CgroupSkb = program_mut(&mut self.ebpf, program)?;
            prog.load()
                .map_err(|source| EbpfError::Rejected { program, source })?;
            let fd = program_fd(program, prog.fd())?;
            place(
                &self.pins,
                program,
                cgroup,
                cgroup_id,
                fd,
                &mut done,
                || {
                    let id = prog.attach(&cgroup_fd, direction, CgroupAttachMode::Single)?;
                    Ok(FdLink::try_from(prog.take_link(id)?)?)
                },
            )?;
        }
        let program = names::PROG_SOCKOPS;
        let prog: &mut SockOps = program_mut(&mut self.ebpf, program)?;
        prog.load()
            .map_err(|source| EbpfError::Rejected { program, source })?;
        let fd = program_fd(program, prog.fd())?;
        place(
            &self.pins,
            program,
            cgroup,
            cgroup_id,
            fd,
            &mut done,
            || {
                let id = prog.attach(&cgroup_fd, CgroupAttachMode::Single)?;
                Ok(FdLink::try_from(prog.take_link(id)?)?)
            },
        )?;
        Ok(done)
    }
}

/// Puts one loaded cgroup program in force: into the link a previous agent
/// pinned for it when that link is on this cgroup and its maps are ours
/// (one atomic switch), else through a new pinned link, the old one (if
/// any) detached only after.
fn place(
    pins: &Pins,
    program: &'static str,
    cgroup: &Path,
    cgroup_id: u64,
    fd: ProgramFd,
    done: &mut Attached,
    attach: impl FnOnce() -> Result<FdLink, AttachError>,
) -> Result<()> {
    let path = pins.link_path(program);
    let old = OpenLink::open(&path)?;
    if let Some(link) = &old
        && pins.compatible
        && link
            .info()
            .is_ok_and(|i| i.link_type == pins::LINK_TYPE_CGROUP && i.cgroup_id == cgroup_id)
    {
        link.update(&fd)
            .map_err(|source| EbpfError::Switch { program, source })?;
        debug!(program, "switched the pinned link to the new program");
        done.switched += 1;
        return Ok(());
    }
    drop(old);
    replace_pin(&path, || {
        let link = attach().map_err(|source| EbpfError::Attach {
            program,
            target: format!("cgroup {}", cgroup.display()),
            source,
        })?;
        pin(link, &path)
    })?;
    debug!(program, cgroup = %cgroup.display(), "attached");
    done.attached += 1;
    Ok(())
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| EbpfError::MissingProgram(name.to_string()))?;
    program.try_into().map_err(|source| EbpfError::Program {
        program: name.to_string(),
        source,
    })
}

/// A loaded program's descriptor, owned (the attach closure borrows the
/// program).
fn program_fd(
    program: &'static str,
    fd: std::result::Result<&ProgramFd, ProgramError>,
) -> Result<ProgramFd> {
    fd.and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|source| EbpfError::Program {
            program: program.to_string(),
            source,
        })
}

/// Puts a new link in place of the one pinned at `path`, make before
/// break: the pin is removed so `attach_and_pin` can take the path while
/// the open old link keeps its program attached. When `attach_and_pin`
/// fails the old link is pinned back, so its program stays in force once
/// this agent exits instead of going with it.
pub fn replace_pin(path: &Path, attach_and_pin: impl FnOnce() -> Result<()>) -> Result<()> {
    let old = OpenLink::open(path)?;
    if old.is_some() {
        std::fs::remove_file(path).map_err(|source| EbpfError::RemovePin {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let result = attach_and_pin();
    if let (Err(err), Some(old)) = (&result, &old) {
        match old.pin(path) {
            Ok(()) => warn!(pin = %path.display(), error = %crate::errors::chain(err),
                "the new program could not be put in force; the previous one stays pinned and enforcing"),
            Err(again) => error!(pin = %path.display(), error = %crate::errors::chain(&again),
                "the previous program could not be pinned back either: it is detached once this agent exits"),
        }
    }
    result
}

fn pin(link: FdLink, path: &Path) -> Result<()> {
    link.pin(path).map_err(|source| EbpfError::PinLink {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

fn raise_memlock() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

/// Tracepoints are found through tracefs, which minimal hosts do not mount.
fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() {
        return Ok(());
    }
    mount("tracefs", TRACEFS).map_err(|err| EbpfError::NoTracefs(TRACEFS, err))?;
    warn!("mounted tracefs at {TRACEFS} (it was not mounted)");
    Ok(())
}

/// `mount -t fstype fstype target`, for the kernel file systems minimal
/// hosts leave unmounted.
pub(crate) fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let target = std::ffi::CString::new(target).expect("no NUL in path");
    let fstype = std::ffi::CString::new(fstype).expect("no NUL");
    // SAFETY: valid C strings; no mount data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
