//! Content codings (RFC 9110 §8.4): what the upstream would decode before it
//! reads a body, decoded here first, within bounds.

use std::io::{self, Read};

/// Most a decoded body may hold: the proxy's own limit on what it reads.
pub const MAX_DECODED: usize = 32 << 20;

/// A decoded body may be this many times its coded size (past
/// `RATIO_FLOOR`); JSON compresses 5–20×, a bomb by thousands.
const MAX_RATIO: usize = 200;
const RATIO_FLOOR: usize = 1 << 20;

/// Codings applied one over another (`gzip, gzip`) beyond this are refused.
const MAX_LAYERS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodingError {
    #[error("content coding `{0}` is not one the proxy can decode (gzip, deflate, br, zstd)")]
    Unknown(String),
    #[error("more than {MAX_LAYERS} content codings applied one over another")]
    TooManyLayers,
    #[error("the {coding} body does not decode: {reason}")]
    Broken { coding: String, reason: String },
    #[error(
        "the {coding} body decodes to more than {limit} bytes (a decompression bomb, or a body \
         over the proxy's limit)"
    )]
    TooLarge { coding: String, limit: usize },
}

/// The codings of a `Content-Encoding` value (all its header lines joined
/// with `,`), in the order they were applied; `identity` and empty entries
/// left out, names lower-cased.
pub fn codings(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect()
}

/// Undoes `codings` (applied in that order) on `body`.
pub fn decode(body: &[u8], codings: &[String]) -> Result<Vec<u8>, CodingError> {
    if codings.len() > MAX_LAYERS {
        return Err(CodingError::TooManyLayers);
    }
    let mut data = body.to_vec();
    for coding in codings.iter().rev() {
        data = decode_one(&data, coding)?;
    }
    Ok(data)
}

/// The coding whose magic bytes `body` starts with, for bodies and parts
/// that arrive compressed without saying so: a lenient reader may still
/// look inside. Deflate and brotli have no magic and are only decoded when
/// declared.
pub fn sniff(body: &[u8]) -> Option<&'static str> {
    if body.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    }
}

pub fn decode_one(data: &[u8], coding: &str) -> Result<Vec<u8>, CodingError> {
    let limit = MAX_DECODED.min(data.len().saturating_mul(MAX_RATIO).max(RATIO_FLOOR));
    let broken = |err: io::Error| CodingError::Broken {
        coding: coding.to_string(),
        reason: err.to_string(),
    };
    let out = match coding {
        // Several gzip members in a row are one body to gzip readers.
        "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(data), limit),
        // RFC 9110's deflate is zlib-wrapped, but servers have long accepted
        // raw deflate too; so does a lenient reader.
        "deflate" => read_bounded(flate2::read::ZlibDecoder::new(data), limit).or_else(|err| {
            if matches!(err, Bounded::TooLarge) {
                return Err(err);
            }
            read_bounded(flate2::read::DeflateDecoder::new(data), limit)
        }),
        "br" => read_bounded(brotli_decompressor::Decompressor::new(data, 8192), limit),
        "zstd" => match zstd::stream::read::Decoder::new(data) {
            Ok(decoder) => read_bounded(decoder, limit),
            Err(err) => Err(Bounded::Io(err)),
        },
        other => return Err(CodingError::Unknown(other.to_string())),
    };
    out.map_err(|err| match err {
        Bounded::Io(err) => broken(err),
        Bounded::TooLarge => CodingError::TooLarge {
            coding: coding.to_string(),
            limit,
        },
    })
}

enum Bounded {
    Io(io::Error),
    TooLarge,
}

/// Reads all of `reader`, but never more than `limit` bytes: a bomb is
/// stopped one byte past the limit, not after it has filled memory.
fn read_bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>, Bounded> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Bounded::Io)?;
    if out.len() > limit {
        return Err(Bounded::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn every_coding_round_trips() {
        let text = br#"{"messages":[{"role":"user","content":"hello"}]}"#;
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(text).unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(text).unwrap();
        let zstd = zstd::encode_all(&text[..], 3).unwrap();
        let cases: [(&str, Vec<u8>); 5] = [
            ("gzip", gzip(text)),
            ("x-gzip", gzip(text)),
            ("deflate", zlib.finish().unwrap()),
            ("deflate", raw.finish().unwrap()),
            ("zstd", zstd),
        ];
        for (coding, coded) in cases {
            assert_eq!(decode_one(&coded, coding).unwrap(), text, "{coding}");
        }
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse_order() {
        let text = b"stacked";
        let twice = zstd::encode_all(&gzip(text)[..], 1).unwrap();
        let list = codings("GZIP, identity,zstd");
        assert_eq!(list, ["gzip", "zstd"]);
        assert_eq!(decode(&twice, &list).unwrap(), text);
        let five = vec!["gzip".to_string(); 5];
        assert_eq!(decode(b"", &five), Err(CodingError::TooManyLayers));
    }

    #[test]
    fn bombs_unknown_and_broken_codings_are_errors() {
        let bomb = gzip(&vec![0u8; 40 << 20]);
        assert!(bomb.len() < 100_000, "the bomb compresses: {}", bomb.len());
        assert!(matches!(
            decode_one(&bomb, "gzip"),
            Err(CodingError::TooLarge { .. })
        ));
        // Under the absolute limit but past the ratio.
        let dense = gzip(&vec![b'a'; 8 << 20]);
        assert!(matches!(
            decode_one(&dense, "gzip"),
            Err(CodingError::TooLarge { .. })
        ));
        assert_eq!(
            decode_one(b"x", "compress"),
            Err(CodingError::Unknown("compress".into()))
        );
        for coding in ["gzip", "deflate", "br", "zstd"] {
            assert!(
                matches!(
                    decode_one(b"not compressed at all", coding),
                    Err(CodingError::Broken { .. })
                ),
                "{coding}"
            );
        }
        let mut truncated = gzip(b"a body that is cut short");
        truncated.truncate(truncated.len() - 6);
        assert!(decode_one(&truncated, "gzip").is_err());
    }

    #[test]
    fn magic_bytes_name_the_coding() {
        assert_eq!(sniff(&gzip(b"x")), Some("gzip"));
        assert_eq!(
            sniff(&zstd::encode_all(&b"x"[..], 1).unwrap()),
            Some("zstd")
        );
        assert_eq!(sniff(b"{\"a\":1}"), None);
    }
}
