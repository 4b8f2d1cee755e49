//! The shape of `prices.yaml` as serde reads it. Each value is validated
//! inside its visitor, while serde_yaml_ng is still at the value: it then
//! reports that value's line and field path. (Failing after
//! `String::deserialize` returns would point at the enclosing item.)

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Deserializer, de};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(deserialize_with = "providers_in_order")]
    pub(super) providers: Vec<(String, Vec<RawEntry>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntry {
    pub(super) model: ModelGlob,
    pub(super) input: Usd,
    pub(super) output: Usd,
}

struct ProviderName(String);

impl<'de> Deserialize<'de> for ProviderName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor("a provider name", |name: &str| {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(format!(
                    "provider \"{name}\": use the endpoint catalog's name (lowercase, [a-z0-9-])"
                ));
            }
            Ok(ProviderName(name.to_string()))
        }))
    }
}

pub(super) struct ModelGlob(pub(super) String, pub(super) GlobMatcher);

impl<'de> Deserialize<'de> for ModelGlob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor("a model glob", |pattern: &str| {
            if pattern.is_empty() {
                return Err("model glob is empty".to_string());
            }
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|err| format!("model glob \"{pattern}\": {err}"))?;
            Ok(ModelGlob(pattern.to_string(), glob.compile_matcher()))
        }))
    }
}

/// The providers map as a list, duplicates included: a plain map would keep
/// the second list of a provider given twice and silently drop the first.
fn providers_in_order<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, Vec<RawEntry>)>, D::Error> {
    struct Providers;

    impl<'de> de::Visitor<'de> for Providers {
        type Value = Vec<(String, Vec<RawEntry>)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of provider names to price lists")
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut providers: Self::Value = Vec::new();
            while let Some(ProviderName(name)) = map.next_key()? {
                providers.push((name, map.next_value()?));
            }
            Ok(providers)
        }
    }

    deserializer.deserialize_map(Providers)
}

/// Visits a string and validates it with `.1`; `.0` says what is expected.
struct StrVisitor<F>(&'static str, F);

impl<T, F: FnOnce(&str) -> Result<T, String>> de::Visitor<'_> for StrVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        (self.1)(value).map_err(E::custom)
    }
}

pub(super) struct Usd(pub(super) f64);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_f64(UsdVisitor)
    }
}

struct UsdVisitor;

impl de::Visitor<'_> for UsdVisitor {
    type Value = Usd;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative number of USD per 1M tokens")
    }

    fn visit_f64<E: de::Error>(self, usd: f64) -> Result<Usd, E> {
        if !(usd.is_finite() && usd >= 0.0) {
            return Err(E::custom(format!(
                "price must be a non-negative number of USD per 1M tokens, got {usd}"
            )));
        }
        Ok(Usd(usd))
    }

    fn visit_i64<E: de::Error>(self, usd: i64) -> Result<Usd, E> {
        self.visit_f64(usd as f64)
    }

    fn visit_u64<E: de::Error>(self, usd: u64) -> Result<Usd, E> {
        self.visit_f64(usd as f64)
    }
}
