//! The bench's two ends: the loopback listener, and the connect() loop that
//! runs as a child process placed in a cgroup before it execs.

use std::{
    ffi::CString,
    io,
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::ClientArgs;
use crate::cgroup::ChildCgroup;

const BACKLOG: libc::c_int = 4096;

/// `cargo xtask bench-client`: `connects` times socket + connect + close,
/// then the elapsed seconds and the CPU seconds this thread used on stdout.
/// The CPU time is what the kernel hook adds to (it runs inside connect()),
/// and it is far less disturbed by scheduling noise than wall time.
pub fn run(args: &ClientArgs) -> Result<()> {
    let cpu_start = thread_cpu_seconds();
    let start = Instant::now();
    for i in 0..args.connects {
        let stream = TcpStream::connect(args.addr)
            .with_context(|| format!("connect #{i} to {} failed", args.addr))?;
        reset_on_close(&stream);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("{elapsed:.6} {:.6}", thread_cpu_seconds() - cpu_start);
    Ok(())
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One measurement: connects per second, and client CPU µs per connect.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rate: f64,
    pub cpu_us: f64,
}

/// SO_LINGER {on, 0}: close() sends RST instead of FIN, so the run leaves no
/// TIME_WAIT sockets behind. Hundreds of thousands of them would exhaust the
/// ephemeral ports and make every later connect() search for a free one.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value. A failure
    // only means a normal close.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Listens on `addr` (SO_REUSEADDR, backlog 4096) and accepts and closes
/// connections on a background thread for the rest of the process's life.
pub fn spawn_listener(addr: SocketAddrV4) -> Result<()> {
    let listener = listen(addr).with_context(|| {
        format!(
            "listening on {addr}; if another server holds the port, find it with \
             `ss -ltnp 'sport = :{}'`",
            addr.port()
        )
    })?;
    thread::Builder::new()
        .name("bench-listener".into())
        .spawn(move || {
            avoid_cpu0();
            for conn in listener.incoming() {
                // Accept and close; errors (a client that reset first) are expected.
                drop(conn);
            }
        })
        .context("starting the listener thread")?;
    Ok(())
}

fn listen(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket syscalls on a descriptor we own; the sockaddr is
    // fully initialised and sized.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        check(libc::bind(
            fd.as_raw_fd(),
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
        check(libc::listen(fd.as_raw_fd(), BACKLOG))?;
        Ok(TcpListener::from(fd))
    }
}

/// Keeps the calling thread off CPU 0, where the client is pinned, when
/// there is another CPU to use.
fn avoid_cpu0() {
    let Some(mut set) = affinity() else { return };
    // SAFETY: CPU_* only touch the local set; sched_setaffinity(0) applies to
    // the calling thread.
    unsafe {
        libc::CPU_CLR(0, &mut set);
        if libc::CPU_COUNT(&set) > 0 {
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the kernel fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// `true` when this process may run on `cpu`, so a child can be pinned there.
pub fn can_use_cpu(cpu: usize) -> bool {
    // SAFETY: CPU_ISSET reads the local set.
    affinity().is_some_and(|set| unsafe { libc::CPU_ISSET(cpu, &set) })
}

/// A set holding `cpu` alone.
fn only(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET only touches the local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> io::Result<()> {
    let set = only(cpu);
    // SAFETY: a valid set; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child join `cgroup` and run only on `cpu` (each when
/// given) before it execs, so it never runs a line of its own elsewhere.
pub fn place(cmd: &mut Command, cgroup: Option<&ChildCgroup>, cpu: Option<usize>) -> Result<()> {
    // Everything pre_exec needs is prepared here: after fork only
    // async-signal-safe calls are allowed (no allocation).
    let procs = cgroup
        .map(|c| CString::new(c.procs_file().as_os_str().as_bytes()))
        .transpose()
        .context("cgroup path contains a NUL byte")?;
    let set = cpu.map(only);
    // SAFETY: the closure only makes raw syscalls on data prepared above.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                join_cgroup(procs)?;
            }
            if let Some(set) = &set
                && libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `exe bench-client` inside `cgroup` (and on CPU 0 when `pin`).
pub fn measure(
    exe: &Path,
    cgroup: &ChildCgroup,
    addr: SocketAddr,
    connects: u32,
    pin: bool,
) -> Result<Sample> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench-client", "--addr", &addr.to_string()])
        .args(["--connects", &connects.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    place(&mut cmd, Some(cgroup), pin.then_some(0))?;
    let out = cmd.output().with_context(|| {
        format!(
            "starting the bench client in {} (`{}`)",
            cgroup.path().display(),
            crate::util::display(&cmd)
        )
    })?;
    if !out.status.success() {
        bail!(
            "the bench client failed ({}) in {}",
            out.status,
            cgroup.path().display()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the bench client printed {text:?}, not two durations"))?;
    let [secs, cpu] = numbers[..] else {
        bail!("the bench client printed {text:?}, not `elapsed cpu`");
    };
    if secs <= 0.0 || cpu <= 0.0 {
        bail!("the bench client reported durations of {secs} s and {cpu} s");
    }
    Ok(Sample {
        rate: f64::from(connects) / secs,
        cpu_us: cpu * 1e6 / f64::from(connects),
    })
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`: writing "0" there moves the writer. Runs between fork and exec.
fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a static buffer;
    // all async-signal-safe.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(err);
        }
    }
    Ok(())
}
