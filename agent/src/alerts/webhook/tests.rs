//! The webhook sink against a real (in-process) HTTP receiver on
//! 127.0.0.1 that fails, refuses, and comes back.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::alerts::{
    AlertsConfig,
    dispatch::{Tuning, open_with},
    settings::WebhookUrl,
    tests::sample,
};

const SECRET: &str = "whsec_test";

/// What the receiver does with attempt number n (from 0).
type Script = Box<dyn Fn(usize) -> StatusCode + Send + Sync>;

struct Receiver {
    script: Script,
    up: AtomicBool,
    attempts: AtomicUsize,
    /// Accepted (2xx) deliveries: (alert id header, body).
    accepted: Mutex<Vec<(String, String)>>,
    bad_signatures: AtomicUsize,
}

async fn receiver(script: Script) -> (Arc<Receiver>, String) {
    receiver_with(script, None).await
}

/// With `tls`, the receiver speaks HTTPS as `localhost`.
async fn receiver_with(
    script: Script,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (Arc<Receiver>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}/hooks/modelgate"),
        None => format!("http://127.0.0.1:{port}/hooks/modelgate"),
    };
    let state = Arc::new(Receiver {
        script,
        up: AtomicBool::new(true),
        attempts: AtomicUsize::new(0),
        accepted: Mutex::new(Vec::new()),
        bad_signatures: AtomicUsize::new(0),
    });
    let served = state.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = served.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(state.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                };
            });
        }
    });
    (state, url)
}

async fn handle(
    state: Arc<Receiver>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (id, timestamp, signature) = (
        header("x-modelgate-alert-id"),
        header("x-modelgate-timestamp"),
        header("x-modelgate-signature"),
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let status = if state.up.load(Ordering::SeqCst) {
        (state.script)(state.attempts.fetch_add(1, Ordering::SeqCst))
    } else {
        state.attempts.fetch_add(1, Ordering::SeqCst);
        StatusCode::SERVICE_UNAVAILABLE
    };
    if status.is_success() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ts: u64 = timestamp.parse().unwrap();
        if now.abs_diff(ts) > 60 || signature != sign(SECRET.as_bytes(), ts, &body) {
            state.bad_signatures.fetch_add(1, Ordering::SeqCst);
        }
        state.accepted.lock().unwrap().push((id, body));
    }
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}

fn config(url: &str, secret_file: &Path) -> AlertsConfig {
    AlertsConfig {
        fold_window: Duration::ZERO,
        webhooks: vec![WebhookSink {
            url: WebhookUrl::try_from(url.to_string()).unwrap(),
            secret_env: None,
            secret_file: Some(secret_file.to_path_buf()),
            format: WebhookFormat::Json,
            timeout: Duration::from_secs(5),
            ca: None,
        }],
        ..AlertsConfig::default()
    }
}

fn tuning() -> Tuning {
    Tuning {
        backoff: Backoff {
            initial: Duration::from_millis(10),
            cap: Duration::from_millis(80),
        },
        drain_grace: Duration::from_millis(300),
        ..Tuning::default()
    }
}

fn alerts(n: usize) -> Vec<Alert> {
    (0..n)
        .map(|i| sample("unmanaged-key", &format!("/usr/bin/app{i}")))
        .collect()
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    (dir, secret)
}

fn webhook_stats(stats: &crate::alerts::stats::Stats) -> crate::alerts::stats::SinkStats {
    stats
        .sinks
        .iter()
        .find(|s| s.sink.starts_with("webhook-"))
        .unwrap()
        .clone()
}

#[tokio::test]
async fn every_alert_arrives_once_in_order_signed_despite_failures() {
    let (dir, secret) = setup();
    let (rx, url) = receiver(Box::new(|n| {
        if n < 3 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }))
    .await;
    let (handle, done) = open_with(dir.path(), &config(&url, &secret), tuning()).unwrap();
    let sent = alerts(5);
    for alert in &sent {
        handle.send(alert.clone());
    }
    wait_for("5 deliveries", || rx.accepted.lock().unwrap().len() >= 5).await;
    drop(handle);
    let stats = done.await.unwrap();

    let accepted = rx.accepted.lock().unwrap().clone();
    let ids: Vec<&str> = accepted.iter().map(|(id, _)| id.as_str()).collect();
    let expected: Vec<&str> = sent.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, expected, "each once, in order");
    for (id, body) in &accepted {
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["id"], id.as_str());
        assert_eq!(json["count"], 1);
    }
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
    let hook = webhook_stats(&stats);
    assert_eq!((hook.delivered, hook.retried, hook.dropped), (5, 3, 0));
    assert_eq!(hook.spool_depth, 0);
}

#[tokio::test]
async fn spooled_alerts_are_replayed_after_a_restart() {
    let (dir, secret) = setup();
    let (rx, url) = receiver(Box::new(|_| StatusCode::NO_CONTENT)).await;
    rx.up.store(false, Ordering::SeqCst);
    let config = config(&url, &secret);

    // The receiver is down for the agent's whole first run.
    let (handle, done) = open_with(dir.path(), &config, tuning()).unwrap();
    let sent = alerts(3);
    for alert in &sent {
        handle.send(alert.clone());
    }
    wait_for("a first attempt", || rx.attempts.load(Ordering::SeqCst) > 0).await;
    drop(handle);
    let stats = done.await.unwrap();
    let hook = webhook_stats(&stats);
    assert_eq!((hook.delivered, hook.spool_depth), (0, 3));
    assert!(rx.accepted.lock().unwrap().is_empty());

    // Next start, receiver up: the spool is replayed without a new alert.
    rx.up.store(true, Ordering::SeqCst);
    let (handle, done) = open_with(dir.path(), &config, tuning()).unwrap();
    wait_for("the replay", || rx.accepted.lock().unwrap().len() >= 3).await;
    drop(handle);
    let stats = done.await.unwrap();
    let ids: Vec<String> = rx
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let expected: Vec<String> = sent.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids, expected);
    let hook = webhook_stats(&stats);
    assert_eq!((hook.delivered, hook.spool_depth), (3, 0));
}

#[tokio::test]
async fn a_refused_alert_is_dropped_counted_and_does_not_block_the_rest() {
    let (dir, secret) = setup();
    let (rx, url) = receiver(Box::new(|n| {
        if n == 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    }))
    .await;
    let (handle, done) = open_with(dir.path(), &config(&url, &secret), tuning()).unwrap();
    let sent = alerts(2);
    for alert in &sent {
        handle.send(alert.clone());
    }
    wait_for("the second alert", || {
        !rx.accepted.lock().unwrap().is_empty()
    })
    .await;
    drop(handle);
    let stats = done.await.unwrap();
    assert_eq!(rx.accepted.lock().unwrap()[0].0, sent[1].id);
    let hook = webhook_stats(&stats);
    assert_eq!((hook.delivered, hook.dropped, hook.retried), (1, 1, 0));
}

#[tokio::test]
async fn https_with_the_sinks_own_ca() {
    let (dir, secret) = setup();
    let minted = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.path().join("receiver.pem");
    std::fs::write(&ca, minted.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(minted.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![minted.cert.der().clone()], key)
    .unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (rx, url) = receiver_with(Box::new(|_| StatusCode::OK), Some(tls)).await;

    // Without the CA the receiver is not trusted: retried, not delivered.
    let untrusted = config(&url, &secret);
    let (handle, done) = open_with(dir.path(), &untrusted, tuning()).unwrap();
    handle.send(sample("unmanaged-key", "/usr/bin/python3"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(handle);
    let hook = webhook_stats(&done.await.unwrap());
    assert_eq!(hook.delivered, 0);
    assert!(hook.retried > 0);
    assert_eq!(
        rx.attempts.load(Ordering::SeqCst),
        0,
        "no request without trust"
    );

    // With it, the spooled alert goes out.
    let mut trusted = untrusted.clone();
    trusted.webhooks[0].ca = Some(ca);
    let (handle, done) = open_with(dir.path(), &trusted, tuning()).unwrap();
    wait_for("the HTTPS delivery", || {
        rx.accepted.lock().unwrap().len() == 1
    })
    .await;
    drop(handle);
    let hook = webhook_stats(&done.await.unwrap());
    assert_eq!((hook.delivered, hook.spool_depth), (1, 0));
    assert_eq!(rx.bad_signatures.load(Ordering::SeqCst), 0);
}

#[test]
fn hmac_sha256_known_vectors() {
    // RFC 4231, test case 2.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
    mac.update(b"what do ya want for nothing?");
    assert_eq!(
        hex(&mac.finalize().into_bytes()),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Our framing, checked against Python's hmac module.
    assert_eq!(
        sign(b"whsec_test", 1764123594, r#"{"id":"abc"}"#),
        "sha256=645fbaa0e489d8d2b9438c4d3ad1f0852a017e6c3adf507ad18fb2ef7f3ef370"
    );
}

#[test]
fn slack_text_says_who_and_how_often() {
    let mut alert = sample("unmanaged-key", "/usr/bin/python3");
    alert.message = "python3 sent its own provider key".into();
    let body: serde_json::Value =
        serde_json::from_str(&render(&alert, WebhookFormat::Slack)).unwrap();
    assert_eq!(
        body["text"],
        "high unmanaged-key: python3 sent its own provider key — /usr/bin/python3 pid 4242 (batch.service)"
    );
    alert.count = 4;
    alert.first_seen = "2026-01-01T00:00:00Z".into();
    let body = render(&alert, WebhookFormat::Slack);
    assert!(body.contains("[×4 since 2026-01-01T00:00:00Z]"), "{body}");
    let json: serde_json::Value =
        serde_json::from_str(&render(&alert, WebhookFormat::Json)).unwrap();
    assert_eq!(json["count"], 4);
}

#[test]
fn secrets_come_from_one_place() {
    let (dir, secret) = setup();
    let mut hook = config("http://127.0.0.1:9/x", &secret).webhooks.remove(0);
    assert_eq!(read_secret(&hook).unwrap().unwrap(), SECRET.as_bytes());
    hook.secret_env = Some("MODELGATE_TEST_UNSET_VARIABLE".into());
    assert!(
        read_secret(&hook)
            .unwrap_err()
            .to_string()
            .contains("not both")
    );
    hook.secret_file = None;
    assert!(
        read_secret(&hook)
            .unwrap_err()
            .to_string()
            .contains("not set")
    );
    hook.secret_env = None;
    assert!(read_secret(&hook).unwrap().is_none());
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    hook.secret_file = Some(empty);
    assert!(
        read_secret(&hook)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}
