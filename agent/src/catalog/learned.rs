//! Addresses learned from DNS answers for catalog names (wildcards too).
//!
//! The kernel puts them in the endpoint map the moment the answer passes;
//! here the agent reads the same answer, keeps each address for its TTL,
//! and lets it go when it expires and is not answered again.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_proto::{op::Message, rr::RData};

use super::resolver::{MAX_TTL, MIN_TTL};

/// Kept a little past the TTL: a client may still connect to an address
/// it resolved just before expiry.
const GRACE: Duration = Duration::from_secs(60);
/// Bound on learned addresses; past it the soonest to expire go first.
const MAX_LEARNED: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedAddr {
    pub provider: String,
    pub host: String,
    pub expires: Instant,
    /// A port seen in use besides the provider's own (SNI backstop).
    pub extra_port: Option<u16>,
}

#[derive(Debug, Default)]
pub struct Learned {
    by_addr: HashMap<IpAddr, LearnedAddr>,
}

impl Learned {
    /// Reads a DNS answer the kernel matched to `provider`; returns the
    /// addresses that are new (an address answered again only gets its
    /// expiry pushed out).
    pub fn absorb(&mut self, payload: &[u8], provider: &str, now: Instant) -> Vec<IpAddr> {
        let Ok(message) = Message::from_vec(payload) else {
            return Vec::new();
        };
        let host = message
            .queries
            .first()
            .map(|q| q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default();
        let mut new = Vec::new();
        for record in &message.answers {
            let addr = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            let ttl = Duration::from_secs(u64::from(record.ttl)).clamp(MIN_TTL, MAX_TTL);
            let entry = LearnedAddr {
                provider: provider.to_string(),
                host: host.clone(),
                expires: now + ttl + GRACE,
                extra_port: None,
            };
            match self.by_addr.insert(addr, entry) {
                Some(previous) if previous.provider == provider => {}
                _ => new.push(addr),
            }
        }
        if self.by_addr.len() > MAX_LEARNED {
            // Down to 90% in one go: sorting on every answer past the cap
            // would make each answer cost the whole table.
            let mut by_expiry: Vec<(IpAddr, Instant)> =
                self.by_addr.iter().map(|(a, l)| (*a, l.expires)).collect();
            by_expiry.sort_by_key(|(_, expires)| *expires);
            let excess = self.by_addr.len() - MAX_LEARNED * 9 / 10;
            for (addr, _) in by_expiry.into_iter().take(excess) {
                self.by_addr.remove(&addr);
            }
        }
        new
    }

    /// An address seen carrying a ClientHello for `host`: kept like a DNS
    /// answer with the longest TTL, on the port it was seen on too.
    /// Returns whether it is new.
    pub fn learn_from_sni(
        &mut self,
        addr: IpAddr,
        port: u16,
        provider: &str,
        host: &str,
        now: Instant,
    ) -> bool {
        let entry = LearnedAddr {
            provider: provider.to_string(),
            host: host.to_string(),
            expires: now + MAX_TTL,
            extra_port: Some(port),
        };
        let previous = self.by_addr.insert(addr, entry);
        previous.is_none_or(|p| p.extra_port != Some(port) || p.provider != provider)
    }

    /// Drops expired addresses; true when any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.by_addr.len();
        self.by_addr.retain(|_, l| l.expires > now);
        self.by_addr.len() != before
    }

    /// Forgets providers the catalog no longer has.
    pub fn retain_providers(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_addr.retain(|_, l| keep(&l.provider));
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&LearnedAddr> {
        self.by_addr.get(addr)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &LearnedAddr)> {
        self.by_addr.iter()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };

    use super::*;

    fn answer(name: &str, addrs: &[[u8; 4]], ttl: u32) -> Vec<u8> {
        let mut message = Message::new(7, MessageType::Response, hickory_proto::op::OpCode::Query);
        let name = Name::from_ascii(name).unwrap();
        message.add_query(Query::query(name.clone(), RecordType::A));
        for addr in addrs {
            message.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::A(A(std::net::Ipv4Addr::from(*addr))),
            ));
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn learns_renews_and_expires() {
        let mut learned = Learned::default();
        let now = Instant::now();
        let payload = answer(
            "MyRes.openai.azure.com.",
            &[[10, 0, 0, 1], [10, 0, 0, 2]],
            5,
        );
        let new = learned.absorb(&payload, "azure-openai", now);
        assert_eq!(new.len(), 2);
        let (_, entry) = learned.iter().next().unwrap();
        assert_eq!(entry.host, "myres.openai.azure.com");
        // TTL 5 s is clamped up to MIN_TTL; the same answer again is not new.
        assert!(learned.absorb(&payload, "azure-openai", now).is_empty());
        assert!(!learned.expire(now + MIN_TTL));
        assert!(learned.expire(now + MIN_TTL + GRACE + Duration::from_secs(1)));
        assert_eq!(learned.len(), 0);
    }

    #[test]
    fn garbage_is_ignored() {
        let mut learned = Learned::default();
        assert!(learned.absorb(&[0xff; 40], "x", Instant::now()).is_empty());
        assert!(learned.absorb(&[], "x", Instant::now()).is_empty());
    }
}
