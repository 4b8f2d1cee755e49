//! systemd's readiness protocol (sd_notify): `READY=1` once the programs
//! are attached and the proxy listens, `WATCHDOG=1` while the main loop
//! turns, `STOPPING=1` at stop. Outside systemd (no `NOTIFY_SOCKET`) every
//! call does nothing.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

use tracing::{debug, warn};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half the unit's `WatchdogSec`, when it set one for us.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|path| match connect(&path) {
                Ok(target) => Some(target),
                Err(err) => {
                    warn!(socket = %path, error = %err, "cannot reach systemd's notify socket");
                    None
                }
            });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(|usec| Duration::from_micros(usec / 2));
        Notifier { target, watchdog }
    }

    /// Sends `state` (newline-separated `KEY=value` lines).
    pub fn notify(&self, state: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(err) = socket.send_to_addr(state.as_bytes(), addr) {
            warn!(error = %err, "cannot notify systemd");
        } else {
            debug!(state, "notified systemd");
        }
    }
}

/// A path, or `@name` for an abstract socket.
fn connect(path: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let (socket, addr) = connect(path.to_str().unwrap()).unwrap();
        let notifier = Notifier {
            target: Some((socket, addr)),
            watchdog: None,
        };
        notifier.notify("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        let name = format!("modelgate-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let (socket, addr) = connect(&format!("@{name}")).unwrap();
        socket.send_to_addr(b"WATCHDOG=1", &addr).unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
