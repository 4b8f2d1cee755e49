//! The socket buffer as `agent_common`'s parsers read it (DNS answers,
//! ClientHellos). The parsing itself lives there, shared with the host,
//! where it is unit tested and fuzzed.

use agent_common::dns::{NAME, Packet};
use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::SkBuffContext};

pub(crate) struct Skb<'a>(pub(crate) &'a SkBuffContext);

// Every read goes through bpf_skb_load_bytes at a computed offset rather
// than indexing a copied buffer: the offsets then never have to be proven
// exact, the verifier can prune equivalent states, and the parsers' loops
// stay far from its instruction limit.
impl Packet for Skb<'_> {
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn load<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(at).ok()
    }

    #[inline(always)]
    fn load_name(&self, at: usize, n: usize, buf: &mut [u8; NAME]) -> Option<()> {
        // The helper needs a size the verifier knows is 1..=NAME, and it
        // must be the very register that was checked: a volatile read
        // stops LLVM from handing the helper an unchecked copy.
        let size = unsafe { core::ptr::read_volatile(&n) };
        if size == 0
            || size > NAME
            || unsafe {
                bpf_skb_load_bytes(
                    self.0.skb.skb.cast(),
                    at as u32,
                    buf.as_mut_ptr().cast(),
                    size as u32,
                )
            } != 0
        {
            return None;
        }
        Some(())
    }
}
