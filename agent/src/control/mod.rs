//! The control API: local HTTP on a unix socket, for `modelgate status`,
//! `usage`, `alerts`, `top` and `reload`. The socket is mode 0660 and
//! group `modelgate`, so who may look at usage or reload the policy is a
//! matter of group membership, not of root.

pub mod client;
mod server;
pub mod status;

use std::path::{Path, PathBuf};

pub use server::{Context, serve};
use tokio::sync::oneshot;

use crate::config::DEFAULT_STATE_DIR;

pub const SOCKET_NAME: &str = "control.sock";
pub const DEFAULT_SOCKET: &str = "/run/modelgate/control.sock";
/// Group allowed to use the socket.
pub const GROUP: &str = "modelgate";

/// The agent with the default state directory listens in /run; one with
/// its own state directory listens inside it, so several can run side by
/// side and a CLI given the same `--state-dir` finds the right one.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    if state_dir == Path::new(DEFAULT_STATE_DIR) {
        PathBuf::from(DEFAULT_SOCKET)
    } else {
        state_dir.join(SOCKET_NAME)
    }
}

/// What only the daemon's own loop can answer.
pub enum Request {
    Status(oneshot::Sender<status::Status>),
    Reload {
        /// Who asked, for the log: the peer's uid.
        by: String,
        reply: oneshot::Sender<Result<status::Reloaded, String>>,
    },
}
