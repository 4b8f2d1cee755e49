//! System calls a process makes during a run, by kind, with `perf stat` on
//! the kernel's syscall tracepoints (every thread of the process). The
//! `/proc/PID/io` counters would miss most of them: sockets are read with
//! `recvfrom`, which they do not count.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

/// The kinds reported: all system calls, then the I/O and wake-up ones a
/// proxy's request path makes.
pub const KINDS: &[(&str, &str)] = &[
    ("all", "raw_syscalls:sys_enter"),
    ("read", "syscalls:sys_enter_read"),
    ("recvfrom", "syscalls:sys_enter_recvfrom"),
    ("write", "syscalls:sys_enter_write"),
    ("writev", "syscalls:sys_enter_writev"),
    ("sendto", "syscalls:sys_enter_sendto"),
    ("epoll_wait", "syscalls:sys_enter_epoll_wait"),
    ("futex", "syscalls:sys_enter_futex"),
];

/// A running count; `stop` ends it and reads the figures.
pub struct Counting(Child);

/// Starts counting `pid`'s system calls; `None` (with the reason printed)
/// where perf or the tracepoints are not there.
pub fn start(pid: u32) -> Option<Counting> {
    let events: Vec<&str> = KINDS.iter().map(|(_, event)| *event).collect();
    let child = Command::new("perf")
        .args(["stat", "-x", ",", "-e", &events.join(","), "-p"])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    match child {
        Ok(child) => Some(Counting(child)),
        Err(err) => {
            println!(
                "bench: no system-call counts: cannot run `perf` ({err}); install it \
                 (`apt-get install linux-perf`) to have them"
            );
            None
        }
    }
}

impl Counting {
    /// Stops perf (SIGINT, as Ctrl-C: it prints its counts) and returns
    /// them by kind.
    pub fn stop(self) -> Result<BTreeMap<&'static str, u64>> {
        let child = self.0;
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let out = child.wait_with_output().context("waiting for perf stat")?;
        let text = String::from_utf8_lossy(&out.stderr);
        let counts = parse(&text);
        if counts.is_empty() {
            anyhow::bail!(
                "perf stat counted nothing ({}): {}; system calls are counted on the \
                 kernel's syscall tracepoints, which need root and tracefs",
                out.status,
                text.trim()
            );
        }
        Ok(counts)
    }
}

/// `perf stat -x ,` lines: `count,unit,event,...`.
fn parse(text: &str) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split(',');
        let (Some(count), Some(_), Some(event)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((kind, _)) = KINDS.iter().find(|(_, e)| *e == event) else {
            continue;
        };
        if let Ok(n) = count.trim().parse::<u64>() {
            counts.insert(*kind, n);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_csv() {
        let text = "1200,,raw_syscalls:sys_enter,100,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_read,0,0.00,,\n\
                    300,,syscalls:sys_enter_write,100,100.00,,\n\
                    garbage\n";
        let counts = parse(text);
        assert_eq!(counts.get("all"), Some(&1200));
        assert_eq!(counts.get("write"), Some(&300));
        assert_eq!(counts.get("read"), None);
    }
}
