//! `bench dns`'s DNS server: a thread in the xtask process (outside the
//! cgroup the agent watches) that answers every query at once with one A
//! record, built by hand from the question bytes as sent. Every answer
//! carries an address of its own (10.x.y.z from a counter), so each one is
//! new to the kernel's endpoint map and to the agent; or, when asked, the
//! addresses cycle through a few, as a real provider's answers do.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};

/// Socket buffers: bursts of a whole millisecond's queries must not drop.
pub const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// The TTL of every answer.
pub const TTL: u32 = 300;
/// How often the serving thread looks at the stop flag when idle.
const POLL: Duration = Duration::from_millis(100);
const HEADER: usize = 12;
/// One answer after the question: a pointer to the question name (2),
/// type, class (4), TTL (4), RDLENGTH (2) and an IPv4 address (4).
const ANSWER_LEN: usize = 16;
/// The largest query we answer (a UDP DNS message without EDNS).
const MAX_QUERY: usize = 512;

/// The running server; dropping it stops its thread.
pub struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Binds `addr` (UDP) and answers on a thread pinned to `cpu` when
    /// given. The answers' addresses are all different when `distinct` is
    /// 0, else they cycle through `distinct` of them.
    pub fn start(addr: SocketAddr, cpu: Option<usize>, distinct: u32) -> Result<Responder> {
        let socket = UdpSocket::bind(addr).with_context(|| {
            format!(
                "binding {addr} (UDP) for the bench's DNS server; if another server holds it \
                 (EADDRINUSE), find it with `ss -lunp 'src {addr}'` and retry when it is gone"
            )
        })?;
        let addr = socket
            .local_addr()
            .context("reading the DNS server's address")?;
        grow_buffers(&socket);
        socket
            .set_read_timeout(Some(POLL))
            .context("setting the DNS server's read timeout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let thread = thread::Builder::new()
            .name("bench-dns-server".into())
            .spawn({
                let (stop, answered) = (stop.clone(), answered.clone());
                move || {
                    if let Some(cpu) = cpu
                        && let Err(err) = super::client::pin_thread(cpu)
                    {
                        eprintln!("bench: warning: cannot pin the DNS server to CPU {cpu}: {err}");
                    }
                    serve(&socket, &stop, &answered, distinct);
                }
            })
            .context("starting the DNS server thread")?;
        Ok(Responder {
            addr,
            stop,
            answered,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers sent so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, stop: &AtomicBool, answered: &AtomicU64, distinct: u32) {
    let mut query = [0u8; MAX_QUERY];
    let mut reply = [0u8; MAX_QUERY + ANSWER_LEN];
    // 10.0.0.1 first; 2^24 - 1 distinct addresses before they repeat.
    let cycle = match distinct {
        0 => 0x00ff_ffff,
        n => n.min(0x00ff_ffff),
    };
    let mut counter: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut query) {
            Ok(got) => got,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(err) => {
                eprintln!("bench: warning: the DNS server's recv failed: {err}");
                thread::sleep(POLL);
                continue;
            }
        };
        counter = counter % cycle + 1;
        let addr = 0x0a00_0000 | counter;
        let Some(n) = answer(&query[..len], addr.to_be_bytes(), &mut reply) else {
            continue;
        };
        // A client that went away (ECONNREFUSED) is not our problem.
        if socket.send_to(&reply[..n], peer).is_ok() {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes into `out` the response to `query`: its header with QR set and
/// one answer, its question as sent, then an A record for the question's
/// name (a compression pointer to it) holding `addr`, TTL [`TTL`]. Returns
/// the response's length; None when `query` is not a one-question query.
pub fn answer(query: &[u8], addr: [u8; 4], out: &mut [u8]) -> Option<usize> {
    if query.len() < HEADER || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // The question: the name's labels up to the root, then type and class.
    let mut pos = HEADER;
    loop {
        let label = usize::from(*query.get(pos)?);
        if label == 0 {
            break;
        }
        if label > 63 {
            return None; // no compression in a question we answer
        }
        pos += 1 + label;
    }
    let question_end = pos + 1 + 4;
    if question_end > query.len() || question_end + ANSWER_LEN > out.len() {
        return None;
    }
    out[..question_end].copy_from_slice(&query[..question_end]);
    // QR=1, AA=1, RD as asked, RA=1, RCODE 0.
    out[2] = 0x80 | 0x04 | (query[2] & 0x01);
    out[3] = 0x80;
    out[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
    let record = &mut out[question_end..question_end + ANSWER_LEN];
    record[..2].copy_from_slice(&[0xc0, HEADER as u8]);
    record[2..6].copy_from_slice(&[0, 1, 0, 1]);
    record[6..10].copy_from_slice(&TTL.to_be_bytes());
    record[10..12].copy_from_slice(&[0, 4]);
    record[12..].copy_from_slice(&addr);
    Some(question_end + ANSWER_LEN)
}

/// Large receive and send buffers (SO_*BUFFORCE as root, past rmem_max),
/// so a burst of queries or answers is queued rather than dropped.
pub fn grow_buffers(socket: &UdpSocket) {
    let size = SOCKET_BUFFER;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |option| {
            // SAFETY: a valid socket fd and a correctly sized option value.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        // Without root the plain option still gets up to the sysctl limit.
        if set(force) != 0 {
            set(plain);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::bench::dns_client::query;

    #[test]
    fn answers_with_the_question_and_one_a_record() {
        let mut q = Vec::new();
        query(0xbeef, 42, &mut q);
        let mut out = [0u8; 600];
        let n = answer(&q, [10, 0, 1, 2], &mut out).expect("a query");
        let r = &out[..n];
        assert_eq!(&r[..2], &[0xbe, 0xef], "the id");
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(r[3] & 0x0f, 0, "RCODE");
        assert_eq!(&r[4..12], &[0, 1, 0, 1, 0, 0, 0, 0], "counts");
        assert_eq!(&r[12..q.len()], &q[12..], "the question as sent");
        let a = &r[q.len()..];
        assert_eq!(a, &[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 0, 1, 2]);
    }

    #[test]
    fn refuses_what_is_not_a_one_question_query() {
        let mut q = Vec::new();
        query(1, 7, &mut q);
        let mut out = [0u8; 600];
        assert_eq!(answer(&q[..10], [10, 0, 0, 1], &mut out), None);
        assert_eq!(answer(&q[..q.len() - 1], [10, 0, 0, 1], &mut out), None);
        let mut response = q.clone();
        response[2] |= 0x80;
        assert_eq!(answer(&response, [10, 0, 0, 1], &mut out), None);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(answer(&two, [10, 0, 0, 1], &mut out), None);
        let mut pointer = q;
        pointer[12] = 0xc0;
        assert_eq!(answer(&pointer, [10, 0, 0, 1], &mut out), None);
    }

    /// Asks `client`'s server for `r<n>...` and returns the address.
    fn ask(client: &UdpSocket, n: u64) -> [u8; 4] {
        let mut q = Vec::new();
        query(n as u16, n, &mut q);
        client.send(&q).unwrap();
        let mut buf = [0u8; 600];
        let len = client.recv(&mut buf).unwrap();
        buf[len - 4..len].try_into().unwrap()
    }

    #[test]
    fn serves_new_or_cycling_addresses_over_loopback() {
        let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let client = UdpSocket::bind(any).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        let server = Responder::start(any, None, 0).unwrap();
        client.connect(server.addr()).unwrap();
        let seen: Vec<_> = (0..3).map(|n| ask(&client, n)).collect();
        assert_eq!(server.answered(), 3);
        assert_eq!(seen, [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]]);
        drop(server);

        let server = Responder::start(any, None, 2).unwrap();
        client.connect(server.addr()).unwrap();
        let seen: Vec<_> = (0..3).map(|n| ask(&client, n)).collect();
        assert_eq!(seen, [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 1]]);
    }
}
