//! Provider credentials held by the gateway: read from a file, an
//! environment variable of the agent, or a command that prints a
//! short-lived token (cached for its ttl). Never logged.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue, header};

use crate::{policy::controls::CredentialSpec, providers::Family};

/// Why the gateway's credential could not be had; the request is refused
/// with this (never with the secret).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the agent's environment has no {0} (credential env)")]
    NoEnv(String),
    #[error("reading the credential file {}", .0.display())]
    File(std::path::PathBuf, #[source] std::io::Error),
    #[error("the credential names no source")]
    NoSource,
    #[error("credential command `{0}` took over 10 s")]
    Timeout(String),
    #[error("running credential command `{0}`")]
    Spawn(String, #[source] std::io::Error),
    #[error("credential command `{0}` failed ({1})")]
    Failed(String, std::process::ExitStatus),
    #[error("{0} is empty")]
    Empty(String),
    #[error("{0} holds more than one line")]
    Lines(String),
    #[error("the credential is not a valid header value")]
    Header(#[source] http::header::InvalidHeaderValue),
}

type Result<T, E = CredentialError> = std::result::Result<T, E>;

const DEFAULT_TTL: Duration = Duration::from_secs(300);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Credentials {
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl Credentials {
    /// The secret for `spec`, from the cache while it is fresh.
    pub async fn resolve(&self, spec: &CredentialSpec) -> Result<String> {
        let key = cache_key(spec);
        if let Some((secret, expires)) = self.cache.lock().expect("poisoned").get(&key)
            && Instant::now() < *expires
        {
            return Ok(secret.clone());
        }
        let (secret, ttl) = fetch(spec).await?;
        self.cache
            .lock()
            .expect("poisoned")
            .insert(key, (secret.clone(), Instant::now() + ttl));
        Ok(secret)
    }
}

fn cache_key(spec: &CredentialSpec) -> String {
    if let Some(env) = &spec.env {
        format!("env:{env}")
    } else if let Some(file) = &spec.file {
        format!("file:{}", file.display())
    } else {
        format!("command:{:?}", spec.command)
    }
}

async fn fetch(spec: &CredentialSpec) -> Result<(String, Duration)> {
    let ttl = spec.ttl.unwrap_or(DEFAULT_TTL);
    if let Some(name) = &spec.env {
        let value = std::env::var(name).map_err(|_| CredentialError::NoEnv(name.clone()))?;
        return non_empty(value, &format!("environment variable {name}")).map(|v| (v, ttl));
    }
    if let Some(path) = &spec.file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|err| CredentialError::File(path.clone(), err))?;
        let first = text.lines().next().unwrap_or("").trim().to_string();
        return non_empty(first, &format!("credential file {}", path.display())).map(|v| (v, ttl));
    }
    let Some(command) = spec.command.as_ref().filter(|c| !c.is_empty()) else {
        return Err(CredentialError::NoSource);
    };
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| CredentialError::Timeout(command[0].clone()))?
    .map_err(|err| CredentialError::Spawn(command[0].clone(), err))?;
    if !output.status.success() {
        return Err(CredentialError::Failed(command[0].clone(), output.status));
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    non_empty(token, &format!("credential command `{}`", command[0])).map(|v| (v, ttl))
}

fn non_empty(value: String, source: &str) -> Result<String> {
    if value.is_empty() {
        return Err(CredentialError::Empty(source.to_string()));
    }
    if value.contains(['\r', '\n']) {
        return Err(CredentialError::Lines(source.to_string()));
    }
    Ok(value)
}

/// The key an application sent, by provider convention, if any.
pub fn app_key(headers: &HeaderMap, uri_query: Option<&str>) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    {
        return Some(bearer.trim().to_string());
    }
    for name in ["x-api-key", "api-key", "x-goog-api-key"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(value.trim().to_string());
        }
    }
    uri_query
        .and_then(|q| {
            q.split('&')
                .find_map(|pair| pair.strip_prefix("key="))
                .map(str::to_string)
        })
        .filter(|k| !k.is_empty())
}

/// Replaces whatever credential the app sent with `secret`, the way the
/// provider expects it.
pub fn inject(family: Family, azure: bool, headers: &mut HeaderMap, secret: &str) -> Result<()> {
    for name in ["authorization", "x-api-key", "api-key", "x-goog-api-key"] {
        headers.remove(name);
    }
    let value = |v: String| HeaderValue::from_str(&v).map_err(CredentialError::Header);
    match family {
        Family::Anthropic => {
            headers.insert("x-api-key", value(secret.to_string())?);
        }
        Family::Gemini => {
            headers.insert("x-goog-api-key", value(secret.to_string())?);
        }
        Family::OpenAi if azure => {
            headers.insert("api-key", value(secret.to_string())?);
        }
        Family::OpenAi | Family::Bedrock => {
            headers.insert(header::AUTHORIZATION, value(format!("Bearer {secret}"))?);
        }
    }
    Ok(())
}

/// `path?query` without a `key=` parameter (Gemini's query-string key).
pub fn strip_query_key(path: &str, query: Option<&str>) -> String {
    let Some(query) = query else {
        return path.to_string();
    };
    // By the decoded name, as the upstream reads it: `%6Bey=` is `key=`.
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            form_urlencoded::parse(name.as_bytes())
                .next()
                .is_none_or(|(name, _)| name != "key")
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_replaces_keys_per_provider() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-app"),
        );
        assert_eq!(app_key(&headers, None).as_deref(), Some("sk-app"));
        inject(Family::Anthropic, false, &mut headers, "sk-ant-managed").unwrap();
        assert!(
            headers.get(header::AUTHORIZATION).is_none(),
            "the app's key is gone"
        );
        assert_eq!(headers["x-api-key"], "sk-ant-managed");
        assert_eq!(
            app_key(&HeaderMap::new(), Some("alt=sse&key=AIzaX")).as_deref(),
            Some("AIzaX")
        );
        for query in ["key=AIzaX&alt=sse", "%6Bey=AIzaX&alt=sse&key"] {
            assert_eq!(
                strip_query_key("/v1beta/models/m:generateContent", Some(query)),
                "/v1beta/models/m:generateContent?alt=sse",
                "{query}"
            );
        }
    }

    #[tokio::test]
    async fn command_tokens_are_cached_for_their_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("n");
        let script = format!("echo x >> {0}; wc -l < {0}", counter.display());
        let spec = CredentialSpec {
            env: None,
            file: None,
            command: Some(vec!["sh".into(), "-c".into(), script]),
            ttl: Some(Duration::from_secs(60)),
        };
        let credentials = Credentials::default();
        assert_eq!(credentials.resolve(&spec).await.unwrap(), "1");
        assert_eq!(credentials.resolve(&spec).await.unwrap(), "1", "cached");
    }
}
