//! The `alerts:` section of agent.yaml. Unknown keys are errors, as in the
//! rest of the file; targets and URLs are checked when the file is read, so
//! a mistake is reported with its line, not at the first alert.

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

pub const DEFAULT_FOLD_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_KEEP: u32 = 5;
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Repeats of an alert within this window are sent as one (0s: never fold).
    #[serde(with = "crate::yaml::duration")]
    pub fold_window: Duration,
    pub file: FileSink,
    pub syslog: Option<SyslogSink>,
    pub webhooks: Vec<WebhookSink>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            fold_window: DEFAULT_FOLD_WINDOW,
            file: FileSink::default(),
            syslog: None,
            webhooks: Vec::new(),
        }
    }
}

/// JSON lines, rotated by size: `alerts.jsonl` → `.1` … `.keep`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSink {
    /// Default: `<state_dir>/alerts.jsonl`.
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    pub keep: u32,
}

impl Default for FileSink {
    fn default() -> Self {
        FileSink {
            path: None,
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSink {
    #[serde(default)]
    pub target: SyslogTarget,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    #[serde(default)]
    pub facility: Facility,
}

fn default_app_name() -> String {
    "modelgate".into()
}

/// `unix:/dev/log`, `udp:host:port` or `tcp:host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SyslogTarget {
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

impl Default for SyslogTarget {
    fn default() -> Self {
        SyslogTarget::Unix(PathBuf::from(DEFAULT_SYSLOG_SOCKET))
    }
}

impl TryFrom<String> for SyslogTarget {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{raw}` is not a syslog target like unix:/dev/log, udp:host:514 or tcp:host:601"
            )
        };
        let (scheme, rest) = raw.split_once(':').ok_or_else(bad)?;
        let host_port = |rest: &str| -> Result<String, String> {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad());
            }
            Ok(rest.to_string())
        };
        match scheme {
            "unix" if rest.starts_with('/') => Ok(SyslogTarget::Unix(PathBuf::from(rest))),
            "udp" => Ok(SyslogTarget::Udp(host_port(rest)?)),
            "tcp" => Ok(SyslogTarget::Tcp(host_port(rest)?)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            SyslogTarget::Udp(addr) => write!(f, "udp:{addr}"),
            SyslogTarget::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Syslog facilities by name (RFC 5424 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern = 0,
    User = 1,
    Mail = 2,
    Daemon = 3,
    #[default]
    Auth = 4,
    Syslog = 5,
    Lpr = 6,
    News = 7,
    Uucp = 8,
    Cron = 9,
    Authpriv = 10,
    Ftp = 11,
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    pub url: WebhookUrl,
    /// Name of an environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// A file holding the HMAC secret (a trailing newline is ignored).
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub format: WebhookFormat,
    #[serde(default = "default_timeout", with = "crate::yaml::positive_duration")]
    pub timeout: Duration,
    /// An extra trust root (PEM) beside the system's.
    pub ca: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    DEFAULT_WEBHOOK_TIMEOUT
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The alert as JSON, as in alerts.jsonl.
    #[default]
    Json,
    /// `{"text": "..."}` for Slack (and Mattermost) incoming webhooks.
    Slack,
}

/// An http(s) URL. Its path may carry a token (Slack's do), so Debug and
/// Display show only scheme and authority.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookUrl(pub http::Uri);

impl TryFrom<String> for WebhookUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        let uri: http::Uri = raw
            .parse()
            .map_err(|err| format!("`{raw}` is not a URL: {err}"))?;
        match uri.scheme_str() {
            Some("https" | "http") if uri.host().is_some_and(|h| !h.is_empty()) => {
                Ok(WebhookUrl(uri))
            }
            _ => Err(format!(
                "`{raw}` is not an http(s) URL with a host, like https://siem.example/hooks/modelgate"
            )),
        }
    }
}

impl WebhookUrl {
    pub fn https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }

    pub fn host(&self) -> &str {
        self.0.host().unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.0
            .port_u16()
            .unwrap_or(if self.https() { 443 } else { 80 })
    }

    /// Path and query, as the request line needs them.
    pub fn path_and_query(&self) -> &str {
        self.0.path_and_query().map_or("/", |p| p.as_str())
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.0.scheme_str().unwrap_or("https");
        match self.0.authority() {
            Some(authority) => write!(f, "{scheme}://{authority}/…"),
            None => write!(f, "{scheme}://?"),
        }
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlertsConfig, String> {
        crate::yaml::parse::<AlertsConfig>("agent.yaml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse(
            "fold_window: 30s\n\
             file: {path: /var/lib/modelgate/alerts.jsonl, max_bytes: 1048576, keep: 3}\n\
             syslog: {target: 'tcp:siem.example:601', app_name: mg, facility: local3}\n\
             webhooks:\n\
             \x20 - url: https://siem.example/hooks/modelgate?token=abc\n\
             \x20   secret_env: MODELGATE_WEBHOOK_SECRET\n\
             \x20   format: slack\n\
             \x20   timeout: 5s\n\
             \x20   ca: /etc/ssl/extra.pem\n",
        )
        .unwrap();
        assert_eq!(config.fold_window, Duration::from_secs(30));
        assert_eq!(config.file.keep, 3);
        let syslog = config.syslog.unwrap();
        assert_eq!(syslog.target, SyslogTarget::Tcp("siem.example:601".into()));
        assert_eq!(syslog.facility as u8, 19);
        let hook = &config.webhooks[0];
        assert_eq!(hook.format, WebhookFormat::Slack);
        assert_eq!(hook.url.path_and_query(), "/hooks/modelgate?token=abc");
        assert_eq!(hook.url.port(), 443);
        assert!(!format!("{hook:?}").contains("token"), "no path in logs");
    }

    #[test]
    fn defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config.fold_window, DEFAULT_FOLD_WINDOW);
        assert_eq!(config.file.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(config.file.keep, DEFAULT_KEEP);
        assert!(config.syslog.is_none() && config.webhooks.is_empty());
        let syslog = parse("syslog: {}").unwrap().syslog.unwrap();
        assert_eq!(syslog.target, SyslogTarget::default());
        assert_eq!(syslog.facility, Facility::Auth);
        assert_eq!(syslog.app_name, "modelgate");
        let hook = &parse("webhooks: [{url: 'http://127.0.0.1:9/x'}]")
            .unwrap()
            .webhooks[0];
        assert_eq!(hook.timeout, DEFAULT_WEBHOOK_TIMEOUT);
        assert_eq!(hook.format, WebhookFormat::Json);
    }

    #[test]
    fn mistakes_are_errors_with_a_reason() {
        for (text, expect) in [
            ("syslog: {target: 'udp:host'}", "not a syslog target"),
            ("syslog: {target: 'file:/x'}", "not a syslog target"),
            ("syslog: {facility: mail2}", "unknown variant"),
            ("webhooks: [{url: 'ftp://x/y'}]", "not an http(s) URL"),
            (
                "webhooks: [{url: 'https://x', secret: s}]",
                "unknown field `secret`",
            ),
            ("file: {size: 3}", "unknown field `size`"),
            ("fold_window: soon", "not a duration"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
