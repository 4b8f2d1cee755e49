//! What one client may cost the proxy: it sits in front of every model
//! call on the host, so a slow, huge or abusive client must not stall or
//! exhaust it for the others.

use std::time::Duration;

use serde::Deserialize;

/// `client_limits:` in agent.yaml.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// Time to send a request's headers (also the idle time allowed
    /// between requests on a kept-alive connection).
    #[serde(with = "crate::yaml::positive_duration")]
    pub header_timeout: Duration,
    /// Time to send a request's body.
    #[serde(with = "crate::yaml::positive_duration")]
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Client connections served at once; past this new ones are closed
    /// at once (and counted), so memory and file descriptors stay bounded.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams: u32,
    /// Largest request body read whole before it is forwarded: a JSON API
    /// request must be, since policy reads the whole document. Past this a
    /// body is refused with a 413, unless it is an upload (see
    /// `stream_uploads_over`). One such body per request in flight is
    /// held in memory.
    pub max_buffered_body: usize,
    /// An upload (a file, audio, a multipart form to an upload endpoint)
    /// larger than this is streamed upstream piece by piece, each piece
    /// scanned before it leaves, instead of being read whole first.
    pub stream_uploads_over: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_connections: 8192,
            max_streams: 100,
            max_buffered_body: 32 << 20,
            stream_uploads_over: 1 << 20,
        }
    }
}

impl ClientLimits {
    /// What hyper needs to hold: its HTTP/1 read buffer has a floor.
    pub fn check(&self) -> Result<(), String> {
        if self.max_header_bytes < 8192 {
            return Err(format!(
                "client_limits.max_header_bytes is {}; give at least 8192",
                self.max_header_bytes
            ));
        }
        if self.max_connections == 0 || self.max_streams == 0 {
            return Err("client_limits.max_connections and max_streams must be above 0".into());
        }
        if self.max_buffered_body < MIN_BUFFERED || self.stream_uploads_over < MIN_BUFFERED {
            return Err(format!(
                "client_limits.max_buffered_body ({}) and stream_uploads_over ({}) must be at \
                 least {MIN_BUFFERED} bytes: a request's form fields must fit",
                self.max_buffered_body, self.stream_uploads_over
            ));
        }
        Ok(())
    }

    /// What an upload is read whole up to: past it, it streams.
    pub fn upload_buffer(&self) -> usize {
        self.stream_uploads_over.min(self.max_buffered_body)
    }
}

/// Smallest `max_buffered_body` and `stream_uploads_over`: the head of an
/// upload (its form fields) is read within it.
const MIN_BUFFERED: usize = 64 << 10;

/// `upstream_timeouts:` in agent.yaml: how long the proxy waits on a model
/// server before it gives the client a clean error instead of a hang.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// From the request sent to the response's headers. Generous: a
    /// reasoning model may think for minutes before its first byte.
    #[serde(with = "crate::yaml::positive_duration")]
    pub response: Duration,
    /// Between two pieces of a response body (a stream that stops).
    #[serde(with = "crate::yaml::positive_duration")]
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            response: Duration::from_secs(600),
            idle: Duration::from_secs(300),
        }
    }
}
