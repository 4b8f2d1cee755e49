//! Process lifecycle tracepoints: exec and exit feed the agent's process
//! cache and keep `MG_PROC_POLICY` from outliving the program it was
//! computed for.

use agent_common::{Counter, EventHeader, EventKind, ExecEvent, ExitEvent, limits};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{MG_EVENTS, MG_PROC_POLICY, count};

// Field offsets from events/sched/*/format; stable for a decade, and the
// agent checks them against the running kernel's format files before load.
const EXEC_FILENAME_LOC: usize = 8;
const EXIT_GROUP_DEAD: usize = 32;

#[tracepoint]
pub fn mg_sched_exec(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // The per-process verdict was computed for the old program; until the
    // agent has evaluated the new one, the cgroup/default level applies.
    let _ = MG_PROC_POLICY.remove(&tgid);
    count(Counter::ExecEvents);

    let Some(mut entry) = MG_EVENTS.reserve::<ExecEvent>(0) else {
        count(Counter::EventsLost);
        return 0;
    };
    let event = entry.as_mut_ptr();
    let uid_gid = bpf_get_current_uid_gid();
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
        // __data_loc: low 16 bits are the offset of the string in the record.
        if let Ok(loc) = ctx.read_at::<u32>(EXEC_FILENAME_LOC) {
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            let dst: &mut [u8; limits::FILENAME_LEN] = &mut (*event).filename;
            if let Ok(name) = bpf_probe_read_kernel_str_bytes(src, dst) {
                (*event).filename_len = name.len() as u32;
            }
        }
    }
    entry.submit(0);
    0
}

#[tracepoint]
pub fn mg_sched_exit(ctx: TracePointContext) -> u32 {
    // Only the exit of the whole thread group ends the process.
    let group_dead: u8 = unsafe { ctx.read_at(EXIT_GROUP_DEAD) }.unwrap_or(0);
    if group_dead == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let _ = MG_PROC_POLICY.remove(&tgid);

    let Some(mut entry) = MG_EVENTS.reserve::<ExitEvent>(0) else {
        count(Counter::EventsLost);
        return 0;
    };
    entry.write(ExitEvent {
        header: EventHeader {
            kind: EventKind::Exit as u32,
            tgid,
            pid: pid_tgid as u32,
            _pad: 0,
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        },
    });
    entry.submit(0);
    0
}
