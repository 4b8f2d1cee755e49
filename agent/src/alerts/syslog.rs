//! The syslog sink: RFC 5424 messages with the alert's facts as structured
//! data, so a SIEM can filter on them without parsing prose:
//!
//! ```text
//! <34>1 2026-11-26T02:19:54.776405Z host modelgate 812 unmanaged-key
//!   [modelgate@32473 type="unmanaged-key" severity="high" id="…" count="1" exe="/usr/bin/python3"
//!    pid="4242" unit="batch.service" provider="openai" rule="managed" host="api.openai.com"] message
//! ```
//!
//! To the local socket (`/dev/log`) or a UDP datagram (RFC 5426), or over
//! TCP with octet-counting framing (RFC 6587 §3.4.1). Syslog has no
//! acknowledgement: each message is tried a few times (reconnecting for
//! TCP) and then counted as dropped; the at-least-once path is the webhook.

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::warn;

use super::{
    Alert, Severity,
    backoff::Backoff,
    settings::{SyslogSink, SyslogTarget},
    stats::SinkCounters,
};

/// Our structured-data id: name@private-enterprise-number.
pub const SD_ID: &str = "modelgate@32473";
/// Datagrams longer than this are cut (in the message text): receivers
/// must accept 2 KiB and most take 8 KiB.
const MAX_DATAGRAM: usize = 8192;
const ATTEMPTS: u32 = 3;
const RETRY: Backoff = Backoff {
    initial: Duration::from_millis(250),
    cap: Duration::from_secs(2),
};
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// RFC 5424 §6.2.1 severities.
pub fn severity_code(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2, // crit
        Severity::High => 3,     // err
        Severity::Warning => 4,  // warning
        Severity::Info => 6,     // informational
    }
}

/// One RFC 5424 message, without framing.
pub fn format(alert: &Alert, config: &SyslogSink, hostname: &str, procid: u32) -> String {
    let pri = (config.facility as u8) * 8 + severity_code(alert.severity);
    let mut sd = format!("[{SD_ID}");
    let count = alert.count.to_string();
    let pid = alert.pid().map(|p| p.to_string());
    let params = [
        ("type", Some(alert.kind)),
        ("severity", Some(alert.severity.as_str())),
        ("id", Some(alert.id.as_str()).filter(|id| !id.is_empty())),
        ("count", Some(count.as_str())),
        ("exe", alert.exe()),
        ("pid", pid.as_deref()),
        ("unit", alert.unit()),
        ("container", alert.container()),
        ("provider", alert.provider.as_deref()),
        ("rule", alert.rule.as_deref()),
        ("host", alert.host.as_deref()),
    ];
    for (name, value) in params {
        if let Some(value) = value {
            sd.push_str(&format!(" {name}=\"{}\"", escape_param(value)));
        }
    }
    sd.push(']');
    // One message per line for receivers that split on newlines.
    let message: String = alert
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "<{pri}>1 {} {} {} {procid} {} {sd} {message}",
        header_field(&alert.time, 128),
        header_field(hostname, 255),
        header_field(&config.app_name, 48),
        header_field(alert.kind, 32),
    )
}

/// PARAM-VALUE escaping (RFC 5424 §6.3.3): `"`, `\` and `]`.
pub fn escape_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Header fields are printable US-ASCII without spaces, `-` when empty.
fn header_field(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if clean.is_empty() { "-".into() } else { clean }
}

fn truncate(line: &mut String, max: usize) {
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

enum Conn {
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

struct Sender {
    target: SyslogTarget,
    conn: Option<Conn>,
}

impl Sender {
    async fn connect(&self) -> io::Result<Conn> {
        match &self.target {
            SyslogTarget::Unix(path) => Ok(Conn::Unix(UnixDatagram::unbound()?, path.clone())),
            SyslogTarget::Udp(addr) => {
                let remote = tokio::net::lookup_host(addr.as_str())
                    .await?
                    .next()
                    .ok_or_else(|| io::Error::other(format!("{addr} has no address")))?;
                let local = if remote.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(remote).await?;
                Ok(Conn::Udp(socket))
            }
            SyslogTarget::Tcp(addr) => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                Ok(Conn::Tcp(stream))
            }
        }
    }

    async fn send(&mut self, mut line: String) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let result = match self.conn.as_mut() {
            Some(Conn::Unix(socket, path)) => {
                truncate(&mut line, MAX_DATAGRAM);
                socket.send_to(line.as_bytes(), &*path).await.map(drop)
            }
            Some(Conn::Udp(socket)) => {
                truncate(&mut line, MAX_DATAGRAM);
                socket.send(line.as_bytes()).await.map(drop)
            }
            Some(Conn::Tcp(stream)) => {
                let framed = format!("{} {line}", line.len());
                stream.write_all(framed.as_bytes()).await
            }
            None => Ok(()),
        };
        if result.is_err() {
            // Reconnect next time: a TCP peer may have restarted.
            self.conn = None;
        }
        result
    }
}

pub fn spawn(
    config: SyslogSink,
    mut rx: mpsc::Receiver<Arc<Alert>>,
    counters: Arc<SinkCounters>,
) -> JoinHandle<()> {
    let hostname = hostname();
    let procid = std::process::id();
    tokio::spawn(async move {
        let mut sender = Sender {
            target: config.target.clone(),
            conn: None,
        };
        while let Some(alert) = rx.recv().await {
            let line = format(&alert, &config, &hostname, procid);
            let mut attempt = 0;
            loop {
                match sender.send(line.clone()).await {
                    Ok(()) => {
                        counters.delivered();
                        break;
                    }
                    Err(_) if attempt + 1 < ATTEMPTS => {
                        counters
                            .retried
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(RETRY.delay(attempt)).await;
                        attempt += 1;
                    }
                    Err(err) => {
                        warn!(target = %config.target, error = %err, "cannot send an alert to syslog");
                        counters.dropped(1, "syslog is unreachable");
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::alerts::{settings::Facility, tests::sample};

    fn config(target: SyslogTarget) -> SyslogSink {
        SyslogSink {
            target,
            app_name: "modelgate".into(),
            facility: Facility::Auth,
        }
    }

    #[test]
    fn formats_rfc5424_with_structured_data() {
        let mut alert = sample("unmanaged-key", "/usr/bin/python3");
        alert.time = "2026-11-26T02:19:54.776405Z".into();
        alert.count = 3;
        alert.message = "python sent its own key\nsecond line".into();
        let line = format(&alert, &config(SyslogTarget::default()), "host-1", 812);
        let expected = format!(
            "<35>1 2026-11-26T02:19:54.776405Z host-1 modelgate 812 unmanaged-key \
             [modelgate@32473 type=\"unmanaged-key\" severity=\"high\" id=\"{}\" count=\"3\" \
             exe=\"/usr/bin/python3\" pid=\"4242\" unit=\"batch.service\" provider=\"openai\" \
             rule=\"managed\" host=\"api.openai.com\"] python sent its own key second line",
            alert.id
        );
        assert_eq!(line, expected);
    }

    #[test]
    fn severities_and_facilities_make_the_priority() {
        let mut alert = sample("quarantine", "/bin/sh");
        let mut cfg = config(SyslogTarget::default());
        cfg.facility = Facility::Local7;
        for (severity, pri) in [
            (Severity::Critical, "<186>"),
            (Severity::High, "<187>"),
            (Severity::Warning, "<188>"),
            (Severity::Info, "<190>"),
        ] {
            alert.severity = severity;
            assert!(
                format(&alert, &cfg, "h", 1).starts_with(pri),
                "{severity:?}"
            );
        }
    }

    #[test]
    fn escapes_quotes_backslashes_and_brackets() {
        assert_eq!(escape_param(r#"a"b\c]d[e"#), r#"a\"b\\c\]d[e"#);
        let mut alert = sample("data-finding", "/opt/we\"ird]\\path");
        alert.identity = alert.identity.map(|mut i| {
            i.cgroup_info.unit = None;
            i
        });
        let line = format(&alert, &config(SyslogTarget::default()), "", 1);
        assert!(line.contains(r#"exe="/opt/we\"ird\]\\path""#), "{line}");
        assert!(!line.contains("unit="), "absent facts are left out: {line}");
        assert!(line.contains(" - modelgate 1 data-finding ["), "{line}");
    }

    #[tokio::test]
    async fn sends_to_a_unix_socket_udp_and_tcp_with_octet_counting() {
        let dir = tempfile::tempdir().unwrap();
        let alert = Arc::new(sample("unmanaged-key", "/usr/bin/python3"));

        let path = dir.path().join("log.sock");
        let unix = UnixDatagram::bind(&path).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let targets = [
            SyslogTarget::Unix(path),
            SyslogTarget::Udp(udp.local_addr().unwrap().to_string()),
            SyslogTarget::Tcp(tcp.local_addr().unwrap().to_string()),
        ];
        for target in targets {
            let (tx, rx) = mpsc::channel(4);
            let counters = Arc::new(SinkCounters::new("syslog".into()));
            let task = spawn(config(target), rx, counters.clone());
            tx.send(alert.clone()).await.unwrap();
            tx.send(alert.clone()).await.unwrap();
            drop(tx);
            task.await.unwrap();
            assert_eq!(counters.snapshot().delivered, 2);
        }

        let mut buf = vec![0u8; 65536];
        let n = unix.recv(&mut buf).await.unwrap();
        let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(datagram.starts_with("<35>1 "), "{datagram}");
        let n = udp.recv(&mut buf).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&buf[..n]), datagram);

        let (mut stream, _) = tcp.accept().await.unwrap();
        let mut received = String::new();
        stream.read_to_string(&mut received).await.unwrap();
        let frame = format!("{} {datagram}", datagram.len());
        assert_eq!(received, format!("{frame}{frame}"));
    }

    #[tokio::test]
    async fn an_absent_socket_is_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let counters = Arc::new(SinkCounters::new("syslog".into()));
        let target = SyslogTarget::Unix(dir.path().join("none.sock"));
        let task = spawn(config(target), rx, counters.clone());
        tx.send(Arc::new(sample("quarantine", "/bin/sh")))
            .await
            .unwrap();
        drop(tx);
        task.await.unwrap();
        let stats = counters.snapshot();
        assert_eq!((stats.delivered, stats.dropped), (0, 1));
        assert_eq!(stats.retried, u64::from(ATTEMPTS - 1));
    }
}
