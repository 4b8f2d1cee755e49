//! Where a redirected connection was going: the kernel's record, found by
//! the client's port (all the proxy sees after accept()).

use std::{net::SocketAddr, sync::Mutex};

use agent_common::{REDIRECT_KEY_V6, Redirect};
use aya::maps::{HashMap as BpfHashMap, MapData};

pub struct Origins {
    map: Mutex<BpfHashMap<MapData, u32, Redirect>>,
}

impl Origins {
    pub fn new(map: BpfHashMap<MapData, u32, Redirect>) -> Origins {
        Origins {
            map: Mutex::new(map),
        }
    }

    /// The record for this peer, removed: each is used by one connection.
    pub fn take(&self, peer: SocketAddr) -> Option<Redirect> {
        let v6 = match peer {
            SocketAddr::V4(_) => false,
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_none(),
        };
        let key = u32::from(peer.port()) | if v6 { REDIRECT_KEY_V6 } else { 0 };
        let mut map = self.map.lock().expect("redirect map lock poisoned");
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(record)
    }
}
