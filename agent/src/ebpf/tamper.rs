//! Is everything still in place? Someone with CAP_BPF (root) can detach a
//! program from the cgroup; the agent notices on its next check and says
//! so (`agent-tamper`). It cannot prevent it: see the threat model.

use std::{fs::File, os::fd::AsRawFd};

use agent_common::names;

use super::{EbpfError, Programs, Result};

/// Our cgroup programs and the attach type each was attached with
/// (`enum bpf_attach_type` values).
const ATTACHED: [(&str, u32); 9] = [
    (names::PROG_CONNECT4, 10),
    (names::PROG_CONNECT6, 11),
    (names::PROG_SENDMSG4, 14),
    (names::PROG_SENDMSG6, 15),
    (names::PROG_GETPEERNAME4, 29),
    (names::PROG_GETPEERNAME6, 30),
    (names::PROG_DNS, 0),
    (names::PROG_EGRESS, 1),
    (names::PROG_SOCKOPS, 3),
];
const BPF_PROG_QUERY: libc::c_long = 16;

/// What was attached where, to check against the kernel later.
pub struct Attachments {
    cgroup: File,
    expected: Vec<(&'static str, u32, u32)>,
    /// The host-wide tracepoints attached at start (not re-checked: no
    /// cgroup to query; the agent holds their links).
    tracepoints: Vec<&'static str>,
}

impl Programs {
    pub fn attachments(&self, cgroup: &std::path::Path) -> Result<Attachments> {
        let mut expected = Vec::new();
        for (name, attach_type) in ATTACHED {
            let program = self
                .ebpf
                .program(name)
                .ok_or_else(|| EbpfError::MissingProgram(name.to_string()))?;
            let info = program.info().map_err(|source| EbpfError::Program {
                program: name.to_string(),
                source,
            })?;
            expected.push((name, attach_type, info.id()));
        }
        // The same list `attach` attaches.
        let mut tracepoints = vec![names::PROG_EXEC, names::PROG_EXIT, names::PROG_FORK];
        if self.execve_argv {
            tracepoints.push(names::PROG_EXECVE_ARGS);
        }
        Ok(Attachments {
            cgroup: File::open(cgroup).map_err(|source| EbpfError::Cgroup {
                path: cgroup.to_path_buf(),
                source,
            })?,
            expected,
            tracepoints,
        })
    }
}

impl Attachments {
    /// The programs attached to the cgroup at start.
    pub fn names(&self) -> Vec<&'static str> {
        self.expected.iter().map(|(name, _, _)| *name).collect()
    }

    /// The host-wide tracepoint programs attached at start.
    pub fn tracepoints(&self) -> &[&'static str] {
        &self.tracepoints
    }

    /// Programs of ours no longer attached to the cgroup.
    pub fn missing(&self) -> Vec<&'static str> {
        self.expected
            .iter()
            .filter(|(_, attach_type, id)| {
                // A failed query is not evidence of tampering.
                query(self.cgroup.as_raw_fd(), *attach_type).is_ok_and(|ids| !ids.contains(id))
            })
            .map(|(name, _, _)| *name)
            .collect()
    }
}

/// The `query` member of `union bpf_attr` (BPF_PROG_QUERY).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Ids of the programs attached to the cgroup for one attach type.
fn query(cgroup: std::os::fd::RawFd, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: a correctly laid out bpf_attr prefix and a buffer of
    // prog_cnt u32s that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            size_of::<QueryAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}
