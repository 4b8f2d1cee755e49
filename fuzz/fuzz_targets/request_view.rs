//! The proxy's reading of a request body held to an independent one: for
//! any body, sent plain or compressed, whatever serde_json reads after the
//! codec crates decompress it, the proxy reads too — and every data class
//! found in any string or object key of that reading is a class the proxy's
//! scan reports. A body serde_json cannot read must be unreadable to the
//! proxy (and so refused under data rules), never half-read.
#![no_main]

use std::{io::Write, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use modelgate::{classify::Classifier, inspect};
use serde_json::Value;

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| Classifier::new(&[]).expect("the built-in classes compile"))
}

/// Byte 0 picks the coding the body is sent with.
fn encode(selector: u8, plain: &[u8]) -> (Option<&'static str>, Vec<u8>) {
    match selector % 4 {
        1 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(plain).expect("in memory");
            (Some("gzip"), enc.finish().expect("in memory"))
        }
        2 => {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(plain).expect("in memory");
            (Some("deflate"), enc.finish().expect("in memory"))
        }
        3 => (Some("zstd"), zstd::encode_all(plain, 1).expect("in memory")),
        _ => (None, plain.to_vec()),
    }
}

/// Every string of the independent reading: values and object keys.
fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k);
                strings(v, out);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, plain)) = data.split_first() else {
        return;
    };
    let (coding, coded) = encode(selector, plain);
    let body = inspect::read_body(&coded.into(), Some("application/json"), coding, true);
    // The lenient side: a UTF-8 byte-order mark is ignored (RFC 8259).
    let lenient = plain.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(plain);
    let Ok(theirs) = serde_json::from_slice::<Value>(lenient) else {
        if plain.is_empty() {
            return;
        }
        assert!(
            body.unreadable().is_some(),
            "serde_json cannot read this body, but the proxy reads it as {:?}",
            body.form
        );
        return;
    };
    assert!(
        body.json().is_some(),
        "serde_json reads this body, the proxy does not: {:?}",
        body.form
    );
    let classifier = classifier();
    let found: Vec<usize> = inspect::scan(classifier, &body, None, &http::HeaderMap::new())
        .iter()
        .map(|f| f.class)
        .collect();
    let mut all = Vec::new();
    strings(&theirs, &mut all);
    for s in all {
        for (class, _) in classifier.scan_counts(s) {
            assert!(
                found.contains(&class),
                "`{}` in {s:?} is not in the proxy's findings {found:?}",
                classifier.classes()[class].name
            );
        }
    }
});
