//! A request as the upstream will read it.
//!
//! Policy decides on what the upstream will interpret, or the request is not
//! forwarded. So before any rule looks at a request, its path is normalised
//! (`path`), its body's content codings are undone (`encoding`), and the
//! body is read in the form its content type says: JSON, a multipart upload
//! (`multipart`), a form, or text. What cannot be read that way is
//! `Unreadable`, and a rule with content controls refuses it (`unparseable:
//! block`, the default) instead of guessing. `scan` then finds data classes
//! in every place a request carries data: the body (values and keys, and
//! across adjacent strings), the query string, headers and parts.

pub mod encoding;
pub mod multipart;
pub mod path;
mod scan;
mod signature;
pub mod stream;

use bytes::Bytes;
use serde_json::Value;

pub use self::{
    scan::{Found, Place, scan},
    signature::body_signature,
};

/// A request body as the upstream will read it.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes with content codings undone (the body itself when none
    /// applied), and a UTF-8 byte-order mark left out.
    pub bytes: Bytes,
    /// Content codings undone, in the order they were applied.
    pub codings: Vec<String>,
    pub form: Form,
}

#[derive(Debug, Clone)]
pub enum Form {
    Empty,
    Json(Value),
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    Multipart(Vec<multipart::Part>),
    /// UTF-8 that is not JSON, where JSON is not expected.
    Text,
    /// Bytes that are not UTF-8, where JSON is not expected (audio, files).
    Binary,
    /// The body cannot be read the way the upstream would read it; why.
    Unreadable(String),
}

impl Body {
    pub fn json(&self) -> Option<&Value> {
        match &self.form {
            Form::Json(value) => Some(value),
            _ => None,
        }
    }

    pub fn unreadable(&self) -> Option<&str> {
        match &self.form {
            Form::Unreadable(why) => Some(why),
            _ => None,
        }
    }

    /// The body is forwarded in another form than it came in (decoded), when
    /// it has to be rewritten.
    pub fn was_decoded(&self) -> bool {
        !self.codings.is_empty()
    }
}

/// Reads `raw` as the upstream would: `content_encoding` is every
/// `Content-Encoding` line joined with `,`; `json_api` says the path is an
/// API that takes JSON.
pub fn read_body(
    raw: &Bytes,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    json_api: bool,
) -> Body {
    let mut body = Body {
        bytes: raw.clone(),
        codings: Vec::new(),
        form: Form::Empty,
    };
    let declared = content_encoding.map(encoding::codings).unwrap_or_default();
    if !declared.is_empty() {
        match encoding::decode(raw, &declared) {
            Ok(decoded) => {
                body.bytes = Bytes::from(decoded);
                body.codings = declared;
            }
            Err(err) => {
                body.form = Form::Unreadable(err.to_string());
                return body;
            }
        }
    } else if let Some(coding) = encoding::sniff(raw)
        && let Ok(decoded) = encoding::decode_one(raw, coding)
    {
        // Compressed without saying so: the upstream takes it as it is, but
        // a reader that sniffs (or the person who receives the file) does
        // not. Policy reads the inside; what is forwarded is untouched.
        body.bytes = Bytes::from(decoded);
        body.codings = vec![coding.to_string()];
    }
    if body.bytes.is_empty() {
        return body;
    }
    let media = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if media.starts_with("multipart/") {
        body.form = match content_type.and_then(multipart::boundary) {
            Some(boundary) => match multipart::parse(&body.bytes, &boundary) {
                Ok(parts) => Form::Multipart(parts),
                Err(why) => Form::Unreadable(why),
            },
            None => Form::Unreadable(format!("`{media}` without a boundary")),
        };
        return body;
    }
    if media == "application/x-www-form-urlencoded" {
        body.form = Form::UrlEncoded;
        return body;
    }
    // RFC 8259 lets a reader ignore a byte-order mark, and some do.
    if let Some(rest) = body.bytes.strip_prefix(b"\xEF\xBB\xBF") {
        body.bytes = Bytes::copy_from_slice(rest);
    }
    let looks_json = media == "application/json"
        || media.ends_with("+json")
        || matches!(
            body.bytes.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[' | b'"')
        );
    body.form = match serde_json::from_slice::<Value>(&body.bytes) {
        Ok(value) => Form::Json(value),
        Err(err) if json_api || looks_json => Form::Unreadable(format!(
            "the body is not one valid UTF-8 JSON document ({err}), and the API reads JSON"
        )),
        Err(_) if std::str::from_utf8(&body.bytes).is_ok() => Form::Text,
        Err(_) => Form::Binary,
    };
    body
}

#[cfg(test)]
mod tests;
