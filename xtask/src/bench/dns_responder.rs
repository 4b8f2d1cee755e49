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

/// Answers in batches: one recvmmsg takes whatever queries are queued
/// (waiting for the first), one sendmmsg sends their answers.
fn serve(socket: &UdpSocket, stop: &AtomicBool, answered: &AtomicU64, distinct: u32) {
    // 10.0.0.1 first; 2^24 - 1 distinct addresses before they repeat.
    let cycle = match distinct {
        0 => 0x00ff_ffff,
        n => n.min(0x00ff_ffff),
    };
    let mut counter: u32 = 0;
    let mut batch = Batch::new();
    while !stop.load(Ordering::Relaxed) {
        let got = match batch.receive(socket) {
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
                eprintln!("bench: warning: the DNS server's recvmmsg failed: {err}");
                thread::sleep(POLL);
                continue;
            }
        };
        let sent = batch.answer_and_send(socket, got, || {
            counter = counter % cycle + 1;
            (0x0a00_0000 | counter).to_be_bytes()
        });
        answered.fetch_add(sent, Ordering::Relaxed);
    }
}

const BATCH: usize = 64;

/// Buffers and message headers for recvmmsg/sendmmsg, allocated once; the
/// headers point into the buffers, which never move (boxed slices).
struct Batch {
    queries: Box<[[u8; MAX_QUERY]]>,
    replies: Box<[[u8; MAX_QUERY + ANSWER_LEN]]>,
    peers: Box<[libc::sockaddr_storage]>,
    in_iov: Box<[libc::iovec]>,
    out_iov: Box<[libc::iovec]>,
    in_msgs: Box<[libc::mmsghdr]>,
    out_msgs: Box<[libc::mmsghdr]>,
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut batch = Batch {
            queries: vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice(),
            replies: vec![[0u8; MAX_QUERY + ANSWER_LEN]; BATCH].into_boxed_slice(),
            peers: vec![zero_peer; BATCH].into_boxed_slice(),
            in_iov: vec![zero_iov; BATCH].into_boxed_slice(),
            out_iov: vec![zero_iov; BATCH].into_boxed_slice(),
            in_msgs: vec![zero_msg; BATCH].into_boxed_slice(),
            out_msgs: vec![zero_msg; BATCH].into_boxed_slice(),
        };
        for i in 0..BATCH {
            batch.in_iov[i] = libc::iovec {
                iov_base: batch.queries[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let hdr = &mut batch.in_msgs[i].msg_hdr;
            hdr.msg_name = (&raw mut batch.peers[i]).cast();
            hdr.msg_iov = &raw mut batch.in_iov[i];
            hdr.msg_iovlen = 1;
            batch.out_msgs[i].msg_hdr.msg_iov = &raw mut batch.out_iov[i];
            batch.out_msgs[i].msg_hdr.msg_iovlen = 1;
        }
        batch
    }

    /// Waits (up to the socket's read timeout) for queries; returns how
    /// many arrived.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for msg in self.in_msgs.iter_mut() {
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the sizes given;
        // MSG_WAITFORONE blocks for the first datagram only.
        let got = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.in_msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }

    /// Answers the first `got` queries (each with the address `next`
    /// gives) and sends the answers; returns how many went out.
    fn answer_and_send(
        &mut self,
        socket: &UdpSocket,
        got: usize,
        mut next: impl FnMut() -> [u8; 4],
    ) -> u64 {
        let mut ready = 0;
        for i in 0..got {
            let len = self.in_msgs[i].msg_len as usize;
            let Some(n) = answer(&self.queries[i][..len], next(), &mut self.replies[i]) else {
                continue;
            };
            self.out_iov[ready] = libc::iovec {
                iov_base: self.replies[i].as_mut_ptr().cast(),
                iov_len: n,
            };
            let hdr = &mut self.out_msgs[ready].msg_hdr;
            hdr.msg_name = (&raw mut self.peers[i]).cast();
            hdr.msg_namelen = self.in_msgs[i].msg_hdr.msg_namelen;
            ready += 1;
        }
        let (mut done, mut sent) = (0, 0);
        while done < ready {
            // SAFETY: headers `done..ready` point at live answers and peers.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.out_msgs[done..].as_mut_ptr(),
                    (ready - done) as libc::c_uint,
                    0,
                )
            };
            if n > 0 {
                done += n as usize;
                sent += n as u64;
            } else {
                // The first one failed (a client that went away): skip it.
                done += 1;
            }
        }
        sent
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
        assert_eq!(seen, [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]]);
        // The count is bumped after sendmmsg returns, which can be after the
        // client has the answer: read it once the thread has stopped.
        let answered = server.answered.clone();
        drop(server);
        assert_eq!(answered.load(Ordering::Relaxed), 3);

        let server = Responder::start(any, None, 2).unwrap();
        client.connect(server.addr()).unwrap();
        let seen: Vec<_> = (0..3).map(|n| ask(&client, n)).collect();
        assert_eq!(seen, [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 1]]);
    }
}
