//! `cargo xtask bench-dns-client`: `bench dns`'s load generator, run in a
//! child process placed in the watched cgroup before it execs. It asks for
//! fresh names `r<N>.openai.azure.com` (each one below the catalog's
//! `*.openai.azure.com`, none asked twice) at a fixed rate, paced in
//! batches per millisecond, from a few UDP sockets, and counts the answers.
//! Prints one JSON line on stdout.

use std::{
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use super::dns_responder::grow_buffers;

/// The catalog wildcard the names fall under (one label below it).
pub const SUFFIX: &str = "openai.azure.com";
/// After the last query, how long answers still in flight are waited for.
const DRAIN: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct DnsClientArgs {
    /// Queries per second.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// The DNS server.
    #[arg(long)]
    pub server: SocketAddr,
    /// UDP sockets the queries are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub sockets: u16,
}

/// Counts of one run.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    answered: u64,
    /// Datagrams that were not an answer with one record.
    bad: u64,
    /// send() found the socket buffer full; the query went out later.
    send_blocked: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, err: &io::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| err.to_string());
    }
}

pub fn run(args: &DnsClientArgs) -> Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    let sockets = (0..args.sockets)
        .map(|_| {
            let socket = UdpSocket::bind(any)?;
            socket.connect(args.server)?;
            socket.set_nonblocking(true)?;
            grow_buffers(&socket);
            Ok(socket)
        })
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("opening UDP sockets to {}", args.server))?;

    let mut tally = Tally::default();
    let mut packet = Vec::with_capacity(64);
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    let length = Duration::from_secs_f64(args.seconds);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= length {
            break;
        }
        // Everything due by the end of the current millisecond goes now.
        let ms = elapsed.as_millis() as u64 + 1;
        let due = (u128::from(args.rate) * u128::from(ms) / 1000) as u64;
        while tally.sent < due {
            let n = tally.sent;
            query(n as u16, n, &mut packet);
            let socket = &sockets[(n % sockets.len() as u64) as usize];
            match socket.send(&packet) {
                Ok(_) => tally.sent += 1,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    tally.send_blocked += 1;
                    break;
                }
                Err(err) => {
                    // Counted as sent: a query that failed is not retried.
                    tally.error(&err);
                    tally.sent += 1;
                }
            }
        }
        receive(&sockets, &mut buf, &mut tally);
        let next = Duration::from_millis(ms).min(length);
        wait(&sockets, next.saturating_sub(start.elapsed()));
    }
    let seconds = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + DRAIN;
    while tally.answered + tally.bad < tally.sent {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        wait(&sockets, deadline - now);
        receive(&sockets, &mut buf, &mut tally);
    }
    let line = json!({
        "sent": tally.sent,
        "answered": tally.answered,
        "seconds": seconds,
        "bad": tally.bad,
        "send_blocked": tally.send_blocked,
        "errors": tally.errors,
        "first_error": tally.first_error,
    });
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").context("writing the result")?;
    Ok(())
}

/// Reads every datagram waiting on the sockets.
fn receive(sockets: &[UdpSocket], buf: &mut [u8], tally: &mut Tally) {
    for socket in sockets {
        loop {
            match socket.recv(buf) {
                // QR set, one answer.
                Ok(n) if n >= 12 && buf[2] & 0x80 != 0 && buf[6..8] == [0, 1] => {
                    tally.answered += 1;
                }
                Ok(_) => tally.bad += 1,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => tally.error(&err),
            }
        }
    }
}

/// Sleeps until a socket is readable or `timeout` passes.
fn wait(sockets: &[UdpSocket], timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid array of its length; a null sigmask leaves
    // the mask unchanged. An error or EINTR only ends the wait early.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        );
    }
}

/// Writes into `out` a standard query (RD set) with id `id` for the A
/// records of `r<n>.openai.azure.com`.
pub fn query(id: u16, n: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let first = format!("r{n}");
    for label in std::iter::once(first.as_str()).chain(SUFFIX.split('.')) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    // The root, type A, class IN.
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_query_for_a_fresh_wildcard_name() {
        let mut q = Vec::new();
        query(0x1234, 42, &mut q);
        let mut expected = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x03r42\x06openai\x05azure\x03com\x00\x00\x01\x00\x01");
        assert_eq!(q, expected);
        // Reused buffers start over.
        query(1, 7, &mut q);
        assert_eq!(&q[12..16], b"\x02r7\x06");
    }
}
