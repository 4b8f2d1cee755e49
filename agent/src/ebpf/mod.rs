//! Loading and attaching the kernel programs.

pub mod endpoints;
pub mod events;
pub mod maps;
pub mod tamper;
mod tracefmt;

use std::{fs::File, path::Path};

use agent_common::names;
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps, TracePoint,
    },
};
use tracing::{debug, warn};

/// The object built by build.rs from agent-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/modelgate-ebpf"));

const TRACEFS: &str = "/sys/kernel/tracing";

/// The loaded programs. Dropping this detaches everything.
pub struct Programs {
    pub ebpf: Ebpf,
    execve_argv: bool,
}

/// Loads the programs and maps; nothing is attached yet, so the agent can
/// fill the maps first and never expose a half-configured policy.
pub fn load() -> Result<Programs> {
    raise_memlock();
    ensure_tracefs()?;
    let offsets = tracefmt::read(Path::new(TRACEFS))?;
    let ebpf = EbpfLoader::new()
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
        .load(OBJECT)
        .context(
            "loading the eBPF object failed; the kernel needs BTF, CONFIG_CGROUP_BPF and \
         CONFIG_BPF_SYSCALL, and the agent needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (or root)",
        )?;
    Ok(Programs {
        ebpf,
        execve_argv: offsets.execve_argv != 0,
    })
}

impl Programs {
    /// Attaches the tracepoints (host-wide) and the socket hooks at `cgroup`
    /// (that cgroup and everything below it).
    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
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
            let tp: &mut TracePoint = self
                .ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?
                .try_into()?;
            tp.load()
                .with_context(|| format!("the kernel rejected program {program}"))?;
            tp.attach(category, name)
                .with_context(|| format!("attaching {program} to tracepoint {category}/{name}"))?;
        }
        let cgroup_fd = File::open(cgroup).with_context(|| {
            format!(
                "cannot open cgroup {}; pass --cgroup with a directory in the cgroup2 mount",
                cgroup.display()
            )
        })?;
        for program in [
            names::PROG_CONNECT4,
            names::PROG_CONNECT6,
            names::PROG_SENDMSG4,
            names::PROG_SENDMSG6,
            names::PROG_GETPEERNAME4,
            names::PROG_GETPEERNAME6,
        ] {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the kernel rejected program {program}"))?;
            // On kernels >= 5.7 aya attaches with a bpf_link, which always
            // coexists with other programs on the cgroup and rejects any
            // attach flag: `Single` means "no flags" there, not exclusive.
            prog.attach(&cgroup_fd, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {program} to cgroup {}", cgroup.display()))?;
            debug!(program, cgroup = %cgroup.display(), "attached");
        }
        let program = names::PROG_DNS;
        let dns: &mut CgroupSkb = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the eBPF object"))?
            .try_into()?;
        dns.load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
        dns.attach(
            &cgroup_fd,
            CgroupSkbAttachType::Ingress,
            CgroupAttachMode::Single,
        )
        .with_context(|| format!("attaching {program} to cgroup {}", cgroup.display()))?;
        let program = names::PROG_EGRESS;
        let egress: &mut CgroupSkb = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the eBPF object"))?
            .try_into()?;
        egress
            .load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
        egress
            .attach(
                &cgroup_fd,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single,
            )
            .with_context(|| format!("attaching {program} to cgroup {}", cgroup.display()))?;
        let program = names::PROG_SOCKOPS;
        let sock_ops: &mut SockOps = self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing from the eBPF object"))?
            .try_into()?;
        sock_ops
            .load()
            .with_context(|| format!("the kernel rejected program {program}"))?;
        sock_ops
            .attach(&cgroup_fd, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {program} to cgroup {}", cgroup.display()))?;
        Ok(())
    }
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
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL in path");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed ({err}); \
             run `mount -t tracefs nodev {TRACEFS}`"
        );
    }
    warn!("mounted tracefs at {TRACEFS} (it was not mounted)");
    Ok(())
}
