//! Passthrough: for clients that pin certificates or must not be
//! decrypted. The proxy reads only the ClientHello's SNI, checks it against
//! the provider, and splices bytes to the original destination.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{Shared, conn::Conn, refusal, upstream_host};
use crate::audit::{Handling, Outcome};

/// A ClientHello larger than this is not waited for.
const MAX_HELLO: usize = 16 * 1024;

pub async fn run(shared: Arc<Shared>, conn: Arc<Conn>, client: TcpStream) {
    let started = Instant::now();
    let sni = match read_sni(&client).await {
        Ok(sni) => sni,
        Err(message) => {
            debug!(%message, "passthrough: no usable ClientHello");
            return;
        }
    };
    let host = match upstream_host(&conn.info, sni.as_deref(), conn.destination.ip()) {
        Ok(host) => host,
        Err(message) => {
            warn!(%message, "refused a passthrough connection");
            shared.record(refusal(
                conn.id,
                Outcome::HostMismatch,
                message,
                conn.info.identity.clone(),
            ));
            return;
        }
    };
    let mut record = conn.audit_record(Handling::Passthrough, "tls");
    record.host = Some(host);
    let mut client = client;
    match TcpStream::connect(conn.destination).await {
        Ok(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => {
                    record.request_bytes = up;
                    record.response_bytes = down;
                }
                Err(err) => {
                    record.outcome = Outcome::UpstreamError;
                    record.error = Some(format!("splice ended: {err}"));
                }
            }
        }
        Err(err) => {
            record.outcome = Outcome::UpstreamError;
            record.error = Some(format!("cannot connect to {}: {err}", conn.destination));
        }
    }
    record.latency_ms = started.elapsed().as_secs_f64() * 1e3;
    shared.record(record);
}

/// Peeks (never consumes) until the whole ClientHello is buffered, and
/// lets rustls parse it.
async fn read_sni(client: &TcpStream) -> Result<Option<String>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; MAX_HELLO];
    loop {
        let n = tokio::time::timeout_at(deadline.into(), client.peek(&mut buf))
            .await
            .map_err(|_| "timed out waiting for the ClientHello".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the ClientHello".into());
        }
        let mut acceptor = Acceptor::default();
        let mut reader = &buf[..n];
        acceptor.read_tls(&mut reader).map_err(|e| e.to_string())?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted.client_hello().server_name().map(str::to_string));
            }
            Ok(None) if n < MAX_HELLO => {
                // Incomplete: wait for more bytes to arrive.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(None) => return Err("ClientHello larger than 16 KiB".into()),
            Err((err, _)) => return Err(err.to_string()),
        }
    }
}
