//! Process lifecycle tracepoints: exec and exit feed the agent's process
//! cache; fork, exec and exit keep `MG_PROC_POLICY` following the program
//! each entry was computed for.

use agent_common::{
    Counter, EventHeader, EventKind, ExeFile, ExeKey, ExeOffsets, ExeVerdict, ExecEvent, ExitEvent,
    exe_flags, exe_special, exe_status, limits,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns,
            bpf_probe_read_user_str,
        },
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{
    MG_ARGV_SCRATCH, MG_CONFIG, MG_EVENTS, MG_EXE_POLICY, MG_EXE_SIZES, MG_EXE_SPECIAL,
    MG_PENDING_ARGV, MG_PROC_POLICY, count,
};

// Field offsets, set by the agent from events/sched/*/format before load
// (names in agent_common::names). 0 means the field is absent.
#[unsafe(no_mangle)]
static MG_EXEC_FILENAME_OFF: u32 = 0;
#[unsafe(no_mangle)]
static MG_EXIT_GROUP_DEAD_OFF: u32 = 0;
#[unsafe(no_mangle)]
static MG_FORK_PARENT_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static MG_FORK_CHILD_PID_OFF: u32 = 0;
#[unsafe(no_mangle)]
static MG_EXECVE_ARGV_OFF: u32 = 0;

/// Kernel structure offsets from BTF (names::GLOBAL_EXE_OFFSETS).
#[unsafe(no_mangle)]
static MG_EXE_OFFSETS: ExeOffsets = ExeOffsets {
    task_mm: 0,
    mm_exe_file: 0,
    file_inode: 0,
    inode_sb: 0,
    inode_ino: 0,
    inode_nlink: 0,
    inode_size: 0,
    inode_ctime_sec: 0,
    inode_ctime_nsec: 0,
    sb_dev: 0,
};

/// The multigrain timestamp code keeps a flag in ctime's top nsec bit.
const CTIME_NSEC_MASK: u32 = 0x3fff_ffff;

/// Globals must be read volatile, or LLVM folds in the compile-time 0.
#[inline(always)]
fn offset(global: &'static u32) -> usize {
    unsafe { core::ptr::read_volatile(global) as usize }
}

#[tracepoint]
pub fn mg_sched_exec(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The per-process verdict was computed for the old program: the new
    // program's is written here, before it runs an instruction.
    let exe = exe_file();
    let status = exec_verdict(tgid, &exe);
    count(Counter::ExecEvents);

    let Some(mut entry) = MG_EVENTS.reserve::<ExecEvent>(0) else {
        count(Counter::EventsLost);
        return 0;
    };
    let event = entry.as_mut_ptr();
    let uid_gid = bpf_get_current_uid_gid();
    let filename_off = offset(&MG_EXEC_FILENAME_OFF);
    unsafe {
        (*event).header = EventHeader {
            kind: EventKind::Exec as u32,
            tgid,
            pid: pid_tgid as u32,
            _pad: 0,
            boot_ns: bpf_ktime_get_boot_ns(),
        };
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event)._pad = 0;
        (*event).filename_len = 0;
        // __data_loc: the low 16 bits are the string's offset in the record.
        if filename_off != 0
            && let Ok(loc) = ctx.read_at::<u32>(filename_off)
        {
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            let dst: &mut [u8; limits::FILENAME_LEN] = &mut (*event).filename;
            if let Ok(name) = bpf_probe_read_kernel_str_bytes(src, dst) {
                (*event).filename_len = name.len() as u32;
            }
        }
        (*event).argv_len = 0;
        (*event)._pad2 = 0;
        if let Some(pending) = MG_PENDING_ARGV.get_ptr(tgid) {
            let len = (*pending).len as usize;
            let dst: &mut [u8; limits::ARGV_LEN] = &mut (*event).argv;
            let src = (*pending).data.as_ptr();
            if len <= limits::ARGV_LEN && bpf_probe_read_kernel_buf(src, dst).is_ok() {
                (*event).argv_len = len as u32;
            }
            let _ = MG_PENDING_ARGV.remove(tgid);
        }
        (*event).exe = exe;
        (*event).exe_status = status;
        (*event)._pad3 = 0;
    }
    entry.submit(0);
    0
}

/// Writes (or clears) the new program's entry in `MG_PROC_POLICY` from
/// what the agent said about the executable file. Returns `exe_status`.
#[inline(always)]
fn exec_verdict(tgid: u32, exe: &ExeFile) -> u32 {
    let exe_rules = MG_CONFIG.get(0).is_some_and(|c| c.exe_rules != 0);
    if !exe_rules || exe.ino == 0 {
        // Until the agent has evaluated the new program, the cgroup /
        // default level applies.
        let _ = MG_PROC_POLICY.remove(tgid);
        if exe_rules {
            count(Counter::ExecVerdictLost);
        }
        return exe_status::CLEARED;
    }
    let (verdict, status) = if exe.nlink == 0 {
        count(Counter::ExecAnonymous);
        (
            MG_EXE_SPECIAL.get_ptr(exe_special::ANONYMOUS),
            exe_status::ANONYMOUS,
        )
    } else {
        let key = ExeKey {
            dev: exe.dev,
            _pad: 0,
            ino: exe.ino,
        };
        match MG_EXE_POLICY.get_ptr(key) {
            Some(known) if unsafe { current(known, exe) } => {
                if unsafe { (*known).flags } & exe_flags::DEFER != 0 {
                    count(Counter::ExecUnvetted);
                    (
                        MG_EXE_SPECIAL.get_ptr(exe_special::UNVETTED),
                        exe_status::DEFERRED,
                    )
                } else {
                    (Some(known), exe_status::VETTED)
                }
            }
            _ => {
                let unvetted = MG_EXE_SPECIAL.get_ptr(exe_special::UNVETTED);
                let any_size =
                    unvetted.is_some_and(|u| unsafe { (*u).flags } & exe_flags::ANY_SIZE != 0);
                // SAFETY: the value is only tested for presence.
                if any_size || unsafe { MG_EXE_SIZES.get(exe.size) }.is_some() {
                    count(Counter::ExecUnvetted);
                    (unvetted, exe_status::UNVETTED)
                } else {
                    (None, exe_status::UNVETTED)
                }
            }
        }
    };
    match verdict {
        Some(verdict) if unsafe { (*verdict).flags } & exe_flags::HAS_ENTRY != 0 => {
            #[expect(
                clippy::needless_borrows_for_generic_args,
                reason = "by reference: no 192-byte copy on the BPF stack"
            )]
            let written = MG_PROC_POLICY.insert(tgid, unsafe { &(*verdict).entry }, 0);
            if written.is_err() {
                let _ = MG_PROC_POLICY.remove(tgid);
                count(Counter::ExecVerdictLost);
            }
        }
        _ => {
            let _ = MG_PROC_POLICY.remove(tgid);
        }
    }
    status
}

/// The vetted version is the one being run.
#[inline(always)]
unsafe fn current(known: *const ExeVerdict, exe: &ExeFile) -> bool {
    unsafe {
        (*known).ctime_sec == exe.ctime_sec
            && (*known).ctime_nsec == exe.ctime_nsec
            && (*known).size == exe.size
    }
}

/// current->mm->exe_file's inode, read with the offsets the agent found in
/// BTF. Zero when they are unknown or a read fails.
#[inline(always)]
fn exe_file() -> ExeFile {
    let mut exe = ExeFile::default();
    let offsets = unsafe { core::ptr::read_volatile(&MG_EXE_OFFSETS) };
    if offsets.task_mm == 0 {
        return exe;
    }
    let _ = unsafe { read_exe_file(&offsets, &mut exe) };
    exe
}

#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    let ptr = unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const *const u8) }.ok()?;
    (!ptr.is_null()).then_some(ptr)
}

#[inline(always)]
unsafe fn read_exe_file(o: &ExeOffsets, exe: &mut ExeFile) -> Option<()> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm = read_ptr(task, o.task_mm)?;
        let file = read_ptr(mm, o.mm_exe_file)?;
        let inode = read_ptr(file, o.file_inode)?;
        let sb = read_ptr(inode, o.inode_sb)?;
        let at = |off: u32| inode.add(off as usize);
        exe.dev = bpf_probe_read_kernel(sb.add(o.sb_dev as usize) as *const u32).ok()?;
        exe.nlink = bpf_probe_read_kernel(at(o.inode_nlink) as *const u32).ok()?;
        exe.size = bpf_probe_read_kernel(at(o.inode_size) as *const i64).ok()?;
        exe.ctime_sec = bpf_probe_read_kernel(at(o.inode_ctime_sec) as *const i64).ok()?;
        exe.ctime_nsec =
            bpf_probe_read_kernel(at(o.inode_ctime_nsec) as *const u32).ok()? & CTIME_NSEC_MASK;
        // Last: a non-zero ino says the whole identity was read.
        exe.ino = bpf_probe_read_kernel(at(o.inode_ino) as *const u64).ok()?;
    }
    Some(())
}

/// Copies argv while the caller's memory still holds it: after a
/// successful exec it is gone, and a process that exits at once would
/// leave the agent only its comm. `mg_sched_exec` picks it up.
#[tracepoint]
pub fn mg_execve_args(ctx: TracePointContext) -> u32 {
    let argv_off = offset(&MG_EXECVE_ARGV_OFF);
    if argv_off == 0 {
        return 0;
    }
    let Ok(argv) = (unsafe { ctx.read_at::<*const *const u8>(argv_off) }) else {
        return 0;
    };
    let Some(buf) = MG_ARGV_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let mut len: usize = 0;
    for i in 0..limits::MAX_ARGS {
        let Ok(arg) = (unsafe { bpf_probe_read_user(argv.wrapping_add(i)) }) else {
            break;
        };
        // `len < ARGV_LEN` and a window of ARGV_LEN keep every write inside
        // the 2 × ARGV_LEN buffer, which is what the verifier checks.
        if arg.is_null() || len >= limits::ARGV_LEN {
            break;
        }
        let read = unsafe {
            bpf_probe_read_user_str(
                (*buf).data.as_mut_ptr().add(len).cast(),
                limits::ARGV_LEN as u32,
                arg.cast(),
            )
        };
        if read <= 0 || read > limits::ARGV_LEN as i64 {
            break;
        }
        // The count includes the NUL, which separates the arguments.
        len += read as usize;
    }
    unsafe {
        (*buf).len = len.min(limits::ARGV_LEN) as u32;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // By reference: a 1 KiB value would not fit the 512-byte stack.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "passing the value would copy 1 KiB onto the BPF stack"
    )]
    let _ = MG_PENDING_ARGV.insert(tgid, unsafe { &*buf }, 0);
    0
}

/// A forked child runs its parent's program until it execs, so it inherits
/// the parent's per-process verdict: an exe rule cannot be escaped by
/// forking. Runs in the parent before the child is first scheduled.
#[tracepoint]
pub fn mg_sched_fork(ctx: TracePointContext) -> u32 {
    let (parent_off, child_off) = (
        offset(&MG_FORK_PARENT_PID_OFF),
        offset(&MG_FORK_CHILD_PID_OFF),
    );
    if parent_off == 0 || child_off == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(entry) = MG_PROC_POLICY.get_ptr(tgid) else {
        return 0;
    };
    let Ok(child) = (unsafe { ctx.read_at::<u32>(child_off) }) else {
        return 0;
    };
    // A new thread gets an entry under its thread id too; it is never
    // looked up (lookups use the tgid) and is removed when the thread exits.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by reference: no 192-byte copy on the BPF stack"
    )]
    let _ = MG_PROC_POLICY.insert(child, unsafe { &*entry }, 0);
    0
}

#[tracepoint]
pub fn mg_sched_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let pid = pid_tgid as u32;
    let group_dead_off = offset(&MG_EXIT_GROUP_DEAD_OFF);
    let process_exit = if group_dead_off != 0 {
        unsafe { ctx.read_at::<u8>(group_dead_off) }.unwrap_or(0) != 0
    } else {
        pid == tgid
    };
    if !process_exit {
        if pid != tgid {
            let _ = MG_PROC_POLICY.remove(pid);
        }
        return 0;
    }
    let _ = MG_PROC_POLICY.remove(tgid);

    let Some(mut entry) = MG_EVENTS.reserve::<ExitEvent>(0) else {
        count(Counter::EventsLost);
        return 0;
    };
    entry.write(ExitEvent {
        header: EventHeader {
            kind: EventKind::Exit as u32,
            tgid,
            pid,
            _pad: 0,
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
    });
    entry.submit(0);
    0
}
