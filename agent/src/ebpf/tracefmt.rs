//! Field offsets of the sched tracepoints, read from tracefs: their layout
//! changes between kernels (6.x moved the fork event's comms to
//! `__data_loc`), so the kernel programs get the offsets as globals.

use std::path::{Path, PathBuf};

/// The tracepoints the programs attach to are unreadable or unlike any
/// kernel the agent knows.
#[derive(Debug, thiserror::Error)]
pub enum TraceFormatError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{event} has no `{fields}` field on this kernel; please report the kernel version \
         (uname -r)"
    )]
    MissingField {
        event: &'static str,
        fields: &'static str,
    },
}

/// Offsets handed to the kernel programs; 0 means "not on this kernel".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub exec_filename: u32,
    pub exit_group_dead: u32,
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
    pub execve_argv: u32,
}

/// The offset of `name` in a tracepoint format file, with its size checked.
pub fn field_offset(format: &str, name: &str, size: u32) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let field_name = decl.rsplit([' ', '*']).next()?.split('[').next()?;
        if field_name != name {
            return None;
        }
        let value = |key: &str| {
            line.split(';')
                .find_map(|part| part.trim().strip_prefix(key))
                .and_then(|v| v.parse::<u32>().ok())
        };
        (value("size:")? == size).then(|| value("offset:"))?
    })
}

pub fn read(tracefs: &Path) -> Result<Offsets, TraceFormatError> {
    let format = |event: &str| {
        let path = tracefs.join(format!("events/sched/{event}/format"));
        std::fs::read_to_string(&path).map_err(|source| TraceFormatError::Read { path, source })
    };
    let exec = format("sched_process_exec")?;
    let exit = format("sched_process_exit")?;
    let fork = format("sched_process_fork")?;
    // syscalls/ tracepoints need CONFIG_FTRACE_SYSCALLS; without them the
    // agent falls back to reading argv from /proc.
    let execve = std::fs::read_to_string(tracefs.join("events/syscalls/sys_enter_execve/format"))
        .unwrap_or_default();
    let Some(exec_filename) = field_offset(&exec, "filename", 4) else {
        return Err(TraceFormatError::MissingField {
            event: "sched_process_exec",
            fields: "filename",
        });
    };
    let (Some(fork_parent_pid), Some(fork_child_pid)) = (
        field_offset(&fork, "parent_pid", 4),
        field_offset(&fork, "child_pid", 4),
    ) else {
        return Err(TraceFormatError::MissingField {
            event: "sched_process_fork",
            fields: "parent_pid`/`child_pid",
        });
    };
    Ok(Offsets {
        exec_filename,
        // Older kernels have no group_dead; the program then treats the
        // exit of the thread-group leader as the process's exit.
        exit_group_dead: field_offset(&exit, "group_dead", 1).unwrap_or(0),
        fork_parent_pid,
        fork_child_pid,
        execve_argv: field_offset(&execve, "argv", 8).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:__data_loc char[] parent_comm;	offset:8;	size:4;	signed:0;
	field:pid_t parent_pid;	offset:12;	size:4;	signed:1;
	field:__data_loc char[] child_comm;	offset:16;	size:4;	signed:0;
	field:pid_t child_pid;	offset:20;	size:4;	signed:1;
";

    const FORK_5_15: &str = "
	field:char parent_comm[16];	offset:8;	size:16;	signed:0;
	field:pid_t parent_pid;	offset:24;	size:4;	signed:1;
	field:char child_comm[16];	offset:28;	size:16;	signed:0;
	field:pid_t child_pid;	offset:44;	size:4;	signed:1;
";

    #[test]
    fn finds_offsets_in_both_layouts() {
        assert_eq!(field_offset(FORK_6_18, "parent_pid", 4), Some(12));
        assert_eq!(field_offset(FORK_6_18, "child_pid", 4), Some(20));
        assert_eq!(field_offset(FORK_5_15, "parent_pid", 4), Some(24));
        assert_eq!(field_offset(FORK_5_15, "child_pid", 4), Some(44));
        assert_eq!(field_offset(FORK_6_18, "parent_comm", 4), Some(8));
        assert_eq!(
            field_offset(FORK_5_15, "parent_comm", 4),
            None,
            "size differs"
        );
        assert_eq!(field_offset(FORK_6_18, "nope", 4), None);
    }

    #[test]
    fn reads_the_running_kernel() {
        let tracefs = Path::new("/sys/kernel/tracing");
        if !tracefs.join("events/sched").exists() {
            eprintln!("skipped: tracefs is not mounted here");
            return;
        }
        let offsets = read(tracefs).expect("sched tracepoints");
        assert!(
            offsets.exec_filename > 0 && offsets.fork_child_pid > 0,
            "{offsets:?}"
        );
    }

    /// A kernel without the fields names what is missing; an unreadable
    /// tracefs names the file.
    #[test]
    fn read_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(
            matches!(&err, TraceFormatError::Read { path, .. } if path.ends_with("sched_process_exec/format")),
            "{err}"
        );
        for (event, text) in [
            (
                "sched_process_exec",
                "\tfield:int other;\toffset:8;\tsize:4;\tsigned:1;\n",
            ),
            ("sched_process_exit", ""),
            ("sched_process_fork", FORK_6_18),
        ] {
            let event_dir = dir.path().join("events/sched").join(event);
            std::fs::create_dir_all(&event_dir).unwrap();
            std::fs::write(event_dir.join("format"), text).unwrap();
        }
        let err = read(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                TraceFormatError::MissingField {
                    event: "sched_process_exec",
                    fields: "filename"
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("uname -r"), "{err}");
    }
}
