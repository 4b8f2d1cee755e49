//! The endpoint catalog: which hosts and addresses are model APIs.

pub mod learned;
pub mod resolver;
pub mod sni;

use std::{collections::HashSet, fmt, net::IpAddr, path::Path, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::yaml::{self, FileError, FileErrors};

pub const FILE_NAME: &str = "endpoints.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    Openai,
    Anthropic,
    Gemini,
    Vertex,
    Bedrock,
    AzureOpenai,
    Cohere,
    Mistral,
    OpenaiCompatible,
    Huggingface,
}

impl Api {
    /// The name the catalog (and every record) spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
            Api::Vertex => "vertex",
            Api::Bedrock => "bedrock",
            Api::AzureOpenai => "azure-openai",
            Api::Cohere => "cohere",
            Api::Mistral => "mistral",
            Api::OpenaiCompatible => "openai-compatible",
            Api::Huggingface => "huggingface",
        }
    }
}

/// A host name from the catalog: exact, or `*.suffix` (any name below).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            HostPattern::Exact(host) => *host == name,
            // Any depth below, as the kernel's `wildcard::below_suffix`.
            HostPattern::Suffix(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|below| below.ends_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let (suffix, name) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if name.contains("://") || name.contains('/') || name.contains(':') {
            return Err(format!(
                "`{raw}` is not a host name: write the name alone, without scheme, port or path"
            ));
        }
        if name.contains('*') {
            return Err(format!(
                "`{raw}`: only a leading `*.` wildcard is supported (e.g. `*.openai.azure.com`)"
            ));
        }
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!("`{raw}` is not a valid host name"));
        }
        let name = name.to_ascii_lowercase();
        if suffix && agent_common::wildcard::suffix_count_bit(&name).is_none() {
            return Err(format!(
                "`{raw}`: a wildcard's suffix may have at most {} labels (the kernel matches names below it at any depth, but looks suffixes up by their label count)",
                agent_common::wildcard::SUFFIX_LABELS
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(de)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// An address or CIDR. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressSpec(pub IpNet);

impl AddressSpec {
    /// Single addresses go in the exact-match map, ranges in the LPM trie.
    pub fn single(&self) -> Option<IpAddr> {
        (self.0.prefix_len() == self.0.max_prefix_len()).then(|| self.0.addr())
    }
}

impl<'de> Deserialize<'de> for AddressSpec {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(de)?;
        if let Ok(addr) = raw.parse::<IpAddr>() {
            return Ok(AddressSpec(IpNet::from(addr)));
        }
        let net: IpNet = raw.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "`{raw}` is neither an IP address nor a CIDR (e.g. 10.0.0.5, 10.0.0.0/24, fd00::/64)"
            ))
        })?;
        if net.trunc() != net {
            return Err(serde::de::Error::custom(format!(
                "`{raw}` has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        Ok(AddressSpec(net))
    }
}

/// HTTPS, and cleartext HTTP: a call to a model API on port 80 is as
/// much a call (most answer with a redirect, some serve it).
fn default_ports() -> Vec<u16> {
    vec![443, 80]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: ProviderName,
    pub api: Api,
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub addresses: Vec<AddressSpec>,
}

/// Provider names appear in rules, events and metrics: keep them plain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProviderName(pub String);

impl<'de> Deserialize<'de> for ProviderName {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(de)?;
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "provider name `{raw}` must be 1-64 characters of a-z, 0-9 and `-`"
            )));
        }
        Ok(ProviderName(raw))
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    providers: Vec<Provider>,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub providers: Vec<Provider>,
}

impl Catalog {
    pub fn load(dir: &Path) -> Result<Catalog, FileErrors> {
        let path = dir.join(FILE_NAME);
        let text = yaml::read(&path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Catalog, FileErrors> {
        let parsed: CatalogFile = yaml::parse(file, text)?;
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        let mut hosts_seen = HashSet::new();
        for (index, provider) in parsed.providers.iter().enumerate() {
            let at = |nth: usize, message: String, field: &str| FileError {
                file: file.to_string(),
                line: yaml::line_of(text, "name", &provider.name.0, nth),
                column: None,
                field: Some(format!("providers[{index}].{field}")),
                message,
            };
            if !seen.insert(&provider.name) {
                errors.push(at(
                    1,
                    format!("provider `{}` is defined twice", provider.name),
                    "name",
                ));
            }
            if provider.hosts.is_empty() && provider.addresses.is_empty() {
                errors.push(at(
                    0,
                    "a provider needs at least one entry in `hosts` or `addresses`".into(),
                    "hosts",
                ));
            }
            if provider.ports.is_empty() || provider.ports.contains(&0) {
                errors.push(at(
                    0,
                    "`ports` must list at least one port, none of them 0".into(),
                    "ports",
                ));
            }
            for host in &provider.hosts {
                if !hosts_seen.insert(host.clone()) {
                    errors.push(at(
                        0,
                        format!("host `{host}` is already listed by another provider"),
                        "hosts",
                    ));
                }
            }
        }
        if parsed.providers.len() > agent_common::limits::MAX_PROVIDERS {
            errors.push(FileError {
                file: file.to_string(),
                line: None,
                column: None,
                field: Some("providers".into()),
                message: format!(
                    "{} providers; at most {} are supported",
                    parsed.providers.len(),
                    agent_common::limits::MAX_PROVIDERS
                ),
            });
        }
        if errors.is_empty() {
            Ok(Catalog {
                providers: parsed.providers,
            })
        } else {
            Err(FileErrors(errors))
        }
    }

    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name.0 == name)
    }

    /// Exact host names to resolve ahead of time (wildcards cannot be).
    pub fn exact_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .providers
            .iter()
            .flat_map(|p| &p.hosts)
            .filter_map(|h| match h {
                HostPattern::Exact(name) => Some(name.clone()),
                HostPattern::Suffix(_) => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Which label counts the `*.suffix` names have, as the kernel's
    /// `AgentConfig::suffix_labels` bits.
    pub fn suffix_labels(&self) -> u8 {
        self.providers
            .iter()
            .flat_map(|p| &p.hosts)
            .filter_map(|h| match h {
                HostPattern::Suffix(suffix) => agent_common::wildcard::suffix_count_bit(suffix),
                HostPattern::Exact(_) => None,
            })
            .fold(0, |bits, bit| bits | bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
providers:
  - name: openai
    api: openai
    hosts: [api.openai.com]
  - name: azure
    api: azure-openai
    hosts: ["*.openai.azure.com"]
  - name: local
    api: openai-compatible
    ports: [8000, 11434]
    addresses: [127.0.0.9, 10.1.0.0/16, "::1"]
"#;

    #[test]
    fn parses_a_catalog() {
        let catalog = Catalog::parse("e.yaml", GOOD).expect("valid catalog");
        assert_eq!(catalog.providers.len(), 3);
        assert_eq!(catalog.providers[0].ports, vec![443, 80], "default ports");
        assert_eq!(catalog.exact_hosts(), vec!["api.openai.com".to_string()]);
        let local = catalog.provider("local").unwrap();
        assert_eq!(local.addresses.len(), 3);
        assert!(local.addresses[0].single().is_some());
        assert!(local.addresses[1].single().is_none());
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let catalog = Catalog::parse("e.yaml", GOOD).unwrap();
        let p = |host: &str| {
            catalog
                .providers
                .iter()
                .find(|p| p.hosts.iter().any(|h| h.matches(host)))
                .map(|p| p.name.0.as_str())
        };
        assert_eq!(p("myres.openai.azure.com"), Some("azure"));
        assert_eq!(p("MyRes.OpenAI.Azure.com."), Some("azure"));
        assert_eq!(p("openai.azure.com"), None);
        assert_eq!(p("evilopenai.azure.com"), None);
        assert_eq!(p("api.openai.com"), Some("openai"));
        assert_eq!(p("a.b.openai.azure.com"), Some("azure"), "any depth");
        assert_eq!(catalog.suffix_labels(), 1 << 2, "one 3-label suffix");
        let deep =
            "providers:\n  - name: x\n    api: openai\n    hosts: [\"*.a.b.c.d.e.f.g.h.i\"]\n";
        let err = Catalog::parse("e.yaml", deep).unwrap_err();
        assert!(err.0[0].message.contains("at most 8 labels"), "{err}");
    }

    #[test]
    fn bad_host_names_name_line_and_field() {
        let text = "providers:\n  - name: x\n    api: openai\n    hosts: [\"https://api.openai.com/v1\"]\n";
        let err = Catalog::parse("e.yaml", text).unwrap_err();
        let err = &err.0[0];
        assert_eq!(err.line, Some(4), "{err}");
        assert_eq!(err.field.as_deref(), Some("providers[0].hosts"), "{err}");
        assert!(err.message.contains("without scheme"), "{err}");
    }

    #[test]
    fn bad_cidr_and_unknown_api() {
        let text = "providers:\n  - name: x\n    api: openai\n    addresses: [10.0.0.1/8]\n";
        let err = Catalog::parse("e.yaml", text).unwrap_err();
        assert!(
            err.0[0].message.contains("did you mean 10.0.0.0/8"),
            "{err}"
        );
        let text = "providers:\n  - name: x\n    api: closedai\n    hosts: [a.b]\n";
        let err = Catalog::parse("e.yaml", text).unwrap_err();
        assert_eq!(err.0[0].line, Some(3), "{err}");
        assert!(err.0[0].message.contains("unknown variant"), "{err}");
    }

    #[test]
    fn duplicates_are_reported_at_the_second_definition() {
        let text = "providers:\n  - name: x\n    api: openai\n    hosts: [a.b]\n  - name: x\n    api: openai\n    hosts: [c.d]\n";
        let err = Catalog::parse("e.yaml", text).unwrap_err();
        assert_eq!(err.0[0].line, Some(5), "{err}");
        assert!(err.0[0].message.contains("defined twice"), "{err}");
    }

    #[test]
    fn shipped_catalog_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let catalog = Catalog::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        for name in ["openai", "anthropic", "bedrock", "gemini", "mistral"] {
            assert!(catalog.provider(name).is_some(), "catalog lacks {name}");
        }
    }
}
