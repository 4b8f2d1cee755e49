//! modelgate's kernel programs.
//!
//! `cgroup/connect{4,6}` and `cgroup/sendmsg{4,6}` decide, at connect time and
//! in O(1), whether a destination is a model endpoint and what the policy
//! says; the sched tracepoints feed the agent's process cache so that even a
//! process that is gone a millisecond later is attributed with its exe.
#![no_std]
#![no_main]

mod dns;
mod egress;
mod maps;
mod redirect;
mod skb;
mod sock;
mod suffix;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only exists
    // to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
