//! Decoding ring-buffer records. The kernel is trusted to write whole
//! records, but a short or unknown one is counted, never a panic.

use agent_common::{
    ConnectEvent, DnsEvent, EgressEvent, EventHeader, EventKind, ExecEvent, ExitEvent,
};

#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "decoded on the stack and consumed at once; the rare DNS event is boxed"
)]
pub enum Event {
    Connect(ConnectEvent),
    Exec(ExecEvent),
    Exit(ExitEvent),
    Dns(Box<DnsEvent>),
    Egress(Box<EgressEvent>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("event kind {kind} needs {need} bytes, got {got}")]
    Truncated { kind: u32, need: usize, got: usize },
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: the length is checked above, T is a plain repr(C) type made
    // of integers and byte arrays (any bit pattern is valid), and
    // read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let kind = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    match kind {
        k if k == EventKind::Connect as u32 => Ok(Event::Connect(read(bytes, k)?)),
        k if k == EventKind::Exec as u32 => Ok(Event::Exec(read(bytes, k)?)),
        k if k == EventKind::Exit as u32 => Ok(Event::Exit(read(bytes, k)?)),
        k if k == EventKind::Dns as u32 => Ok(Event::Dns(Box::new(read(bytes, k)?))),
        k if k == EventKind::Egress as u32 => Ok(Event::Egress(Box::new(read(bytes, k)?))),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Short(0));
        let mut bytes = vec![0u8; 24];
        bytes[0] = 99;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::UnknownKind(99));
        bytes[0] = EventKind::Connect as u8;
        assert!(matches!(
            decode(&bytes).unwrap_err(),
            DecodeError::Truncated {
                need: 96,
                got: 24,
                ..
            }
        ));
        let exit = vec![EventKind::Exit as u8, 0, 0, 0, 7, 0, 0, 0];
        let mut exit = exit;
        exit.resize(24, 0);
        match decode(&exit).unwrap() {
            Event::Exit(e) => assert_eq!(e.header.tgid, 7),
            other => panic!("expected exit, got {other:?}"),
        }
    }
}
