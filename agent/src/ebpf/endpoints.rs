//! The catalog (plus resolved addresses) in the kernel's key format.

use std::{collections::HashMap, net::IpAddr};

use agent_common::{CIDR_PORT_BITS, CidrKey, DnsName, EndpointKey, EndpointValue, to_v6_bytes};

use crate::{
    catalog::{Catalog, HostPattern, learned::Learned, resolver::ResolvedHosts},
    policy::compile::{IdError, Ids},
};

/// The kernel's DNS table: catalog names (by `name_hash`) → provider and
/// ports, exact names and `*.suffix` wildcards alike.
pub fn dns_names(catalog: &Catalog, ids: &mut Ids) -> Result<HashMap<u64, DnsName>, IdError> {
    let mut names: HashMap<u64, DnsName> = HashMap::new();
    for provider in &catalog.providers {
        let id = ids.provider(&provider.name.0)?;
        // The kernel inserts every slot: unused ones repeat the first port.
        let first = provider.ports.first().copied().unwrap_or(443);
        let mut ports = [first; agent_common::limits::DNS_PORTS];
        for (slot, port) in ports.iter_mut().zip(&provider.ports) {
            *slot = *port;
        }
        for host in &provider.hosts {
            let (name, flag) = match host {
                HostPattern::Exact(name) => (name, agent_common::dns_flags::EXACT),
                HostPattern::Suffix(suffix) => (suffix, agent_common::dns_flags::SUFFIX),
            };
            let entry = names
                .entry(agent_common::name_hash(name.as_bytes()))
                .or_insert(DnsName {
                    provider: id,
                    flags: 0,
                    ports,
                });
            // Catalog hosts are unique, so a key is one provider's.
            entry.flags |= flag;
            // The dotted form, for the SNI of a ClientHello.
            let sni_flag = if flag == agent_common::dns_flags::EXACT {
                agent_common::dns_flags::SNI_EXACT
            } else {
                agent_common::dns_flags::SNI_SUFFIX
            };
            let entry = names
                .entry(agent_common::dotted_hash(name.as_bytes()))
                .or_insert(DnsName {
                    provider: id,
                    flags: 0,
                    ports,
                });
            entry.flags |= sni_flag;
        }
    }
    Ok(names)
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct EndpointSet {
    pub exact: HashMap<EndpointKey, EndpointValue>,
    /// Keyed by (LPM prefix length, key data).
    pub cidrs: HashMap<(u32, CidrKey), EndpointValue>,
    /// What the address was known as, for the decision record.
    pub names: HashMap<IpAddr, String>,
    /// Addresses claimed by two providers (shared front ends); the first
    /// provider in catalog order keeps them.
    pub conflicts: usize,
    /// Ports of providers with host names: the kernel may learn addresses
    /// for them from DNS at any time, so their port flag is always set.
    pub host_ports: std::collections::BTreeSet<u16>,
}

/// The exact-match key of an address and port.
pub fn endpoint_key(addr: IpAddr, port: u16) -> EndpointKey {
    EndpointKey {
        addr: to_v6_bytes(addr),
        port,
        _pad: [0; 2],
    }
}

/// What an endpoint key maps to: the provider it belongs to.
pub fn endpoint_value(provider: u32) -> EndpointValue {
    EndpointValue {
        provider,
        _reserved: 0,
    }
}

impl EndpointSet {
    pub fn build(
        catalog: &Catalog,
        resolved: &ResolvedHosts,
        learned: &Learned,
        ids: &mut Ids,
    ) -> Result<EndpointSet, IdError> {
        let mut set = EndpointSet::default();
        for provider in &catalog.providers {
            if !provider.hosts.is_empty() {
                set.host_ports.extend(provider.ports.iter().copied());
            }
            let value = endpoint_value(ids.provider(&provider.name.0)?);
            let insert_exact = |addr: IpAddr, name: Option<&str>, set: &mut EndpointSet| {
                for port in &provider.ports {
                    let key = endpoint_key(addr, *port);
                    match set.exact.get(&key) {
                        Some(existing) if existing.provider != value.provider => {
                            set.conflicts += 1;
                        }
                        Some(_) => {}
                        None => {
                            set.exact.insert(key, value);
                        }
                    }
                }
                if let Some(name) = name {
                    set.names.entry(addr).or_insert_with(|| name.to_string());
                }
            };
            for spec in &provider.addresses {
                match spec.single() {
                    Some(addr) => insert_exact(addr, None, &mut set),
                    None => {
                        let (addr, prefix) = match spec.0 {
                            ipnet::IpNet::V4(net) => {
                                (IpAddr::V4(net.network()), 96 + u32::from(net.prefix_len()))
                            }
                            ipnet::IpNet::V6(net) => {
                                (IpAddr::V6(net.network()), u32::from(net.prefix_len()))
                            }
                        };
                        for port in &provider.ports {
                            let key = CidrKey {
                                port_be: port.to_be_bytes(),
                                addr: to_v6_bytes(addr),
                            };
                            set.cidrs
                                .entry((CIDR_PORT_BITS + prefix, key))
                                .or_insert(value);
                        }
                    }
                }
            }
            for (host, addrs) in resolved.iter() {
                if provider.hosts.iter().any(|h| h.matches(host)) {
                    for addr in addrs {
                        insert_exact(*addr, Some(host), &mut set);
                    }
                }
            }
            for (addr, learned) in learned.iter() {
                if learned.provider == provider.name.0 {
                    insert_exact(*addr, Some(&learned.host), &mut set);
                    if let Some(port) = learned.extra_port {
                        let key = endpoint_key(*addr, port);
                        set.exact.entry(key).or_insert(value);
                    }
                }
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::resolver::Resolved;

    #[test]
    fn builds_exact_and_cidr_keys() {
        let catalog = Catalog::parse(
            "e.yaml",
            "providers:\n  - name: a\n    api: openai\n    hosts: [api.a.com]\n    ports: [443, 8443]\n    addresses: [127.0.0.9, 10.1.0.0/16, \"fd00::/64\"]\n  - name: b\n    api: openai\n    hosts: [api.b.com]\n",
        )
        .unwrap();
        let mut resolved = ResolvedHosts::default();
        resolved.update(Resolved {
            host: "api.a.com".into(),
            addrs: vec!["192.0.2.1".parse().unwrap()],
        });
        resolved.update(Resolved {
            host: "api.b.com".into(),
            addrs: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        });
        let mut ids = Ids::default();
        let set = EndpointSet::build(&catalog, &resolved, &Learned::default(), &mut ids).unwrap();
        // a: (127.0.0.9 + 192.0.2.1) × 2 ports; b (default ports 443, 80):
        // 2001:db8::1 × 2 and 192.0.2.1:80 (192.0.2.1:443 is a's).
        assert_eq!(set.exact.len(), 7, "{:?}", set.exact.keys());
        assert_eq!(set.conflicts, 1, "192.0.2.1:443 claimed by both");
        assert_eq!(set.cidrs.len(), 4);
        let v4 = CidrKey {
            port_be: 443u16.to_be_bytes(),
            addr: to_v6_bytes("10.1.0.0".parse().unwrap()),
        };
        assert!(
            set.cidrs.contains_key(&(16 + 96 + 16, v4)),
            "v4 prefix offset by 96"
        );
        assert_eq!(
            set.names
                .get(&"192.0.2.1".parse().unwrap())
                .map(String::as_str),
            Some("api.a.com")
        );
    }
}
