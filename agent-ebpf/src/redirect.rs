//! The redirect path: send a connect() to the local proxy, remember where it
//! was going, and keep the detour invisible to the application.

use agent_common::{REDIRECT_KEY_V6, Redirect};
use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr},
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};

use crate::maps::{MG_REDIRECT_COOKIE, MG_REDIRECT_PORT};

const AF_INET: u16 = 2;
const AF_INET6: u32 = 10;
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];
/// Second-to-last word of a v4-mapped IPv6 address (::ffff:a.b.c.d).
const V4_MAPPED_MARK: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([
        addr[4 * i],
        addr[4 * i + 1],
        addr[4 * i + 2],
        addr[4 * i + 3],
    ])
}

/// Remembers `redirect` under the socket's cookie and points the connect at
/// the proxy (127.0.0.1, or ::1 for a real IPv6 destination). Returns false
/// when it could not be remembered: the caller then refuses the connect.
#[inline(always)]
pub fn redirect_to_proxy(
    ctx: &SockAddrContext,
    redirect: &Redirect,
    family: u16,
    proxy_port: u16,
) -> bool {
    let sa = ctx.sock_addr;
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if MG_REDIRECT_COOKIE.insert(cookie, redirect, 0).is_err() {
        return false;
    }
    // Context fields take 4-byte stores only, one field at a time.
    unsafe {
        if family == AF_INET {
            core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(LOOPBACK4));
        } else {
            // A v4-mapped destination on a dual-stack socket is sent to the
            // IPv4 listener through ::ffff:127.0.0.1.
            let (w2, w3) = if is_v4_mapped(&redirect.addr) {
                (V4_MAPPED_MARK, u32::from_ne_bytes(LOOPBACK4))
            } else {
                (0, u32::from_ne_bytes([0, 0, 0, 1]))
            };
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], 0);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], 0);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], w2);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], w3);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(proxy_port.to_be()));
    }
    true
}

fn original(sa: *mut bpf_sock_addr) -> Option<&'static Redirect> {
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    MG_REDIRECT_COOKIE.get_ptr(cookie).map(|r| unsafe { &*r })
}

/// getpeername() on a redirected socket reports where the application meant
/// to go, so its logs and peer checks see no proxy.
#[cgroup_sock_addr(getpeername4)]
pub fn mg_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(redirect) = original(sa)
        && is_v4_mapped(&redirect.addr)
    {
        unsafe {
            core::ptr::write_volatile(&mut (*sa).user_ip4, word(&redirect.addr, 3));
            core::ptr::write_volatile(&mut (*sa).user_port, u32::from(redirect.port.to_be()));
        }
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn mg_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(redirect) = original(sa) {
        unsafe {
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], word(&redirect.addr, 0));
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], word(&redirect.addr, 1));
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], word(&redirect.addr, 2));
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], word(&redirect.addr, 3));
            core::ptr::write_volatile(&mut (*sa).user_port, u32::from(redirect.port.to_be()));
        }
    }
    1
}

/// Once TCP has picked the client's local port (just before the SYN), the
/// record moves under that port: all the proxy knows after accept() is its
/// peer's address.
#[sock_ops]
pub fn mg_tcp_connect(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    let ops = ctx.ops;
    let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
    let Some(redirect) = MG_REDIRECT_COOKIE.get_ptr(cookie) else {
        return 1;
    };
    let (family, port, w0, w1, w2) = unsafe {
        (
            core::ptr::read_volatile(&(*ops).family),
            core::ptr::read_volatile(&(*ops).local_port),
            core::ptr::read_volatile(&(*ops).remote_ip6[0]),
            core::ptr::read_volatile(&(*ops).remote_ip6[1]),
            core::ptr::read_volatile(&(*ops).remote_ip6[2]),
        )
    };
    // Which proxy listener accepts it: v6 only for a real IPv6 peer.
    let v6 = family == AF_INET6 && !(w0 == 0 && w1 == 0 && w2 == V4_MAPPED_MARK);
    let key = (port & 0xffff) | if v6 { REDIRECT_KEY_V6 } else { 0 };
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by reference: no 80-byte copy on the BPF stack"
    )]
    let _ = MG_REDIRECT_PORT.insert(key, unsafe { &*redirect }, 0);
    1
}
