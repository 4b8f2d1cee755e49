use std::io::Write;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::*;
use crate::classify::Classifier;

const KEY: &str = "AKIAQWERTYUIOPASDFGH";

fn classifier() -> Classifier {
    Classifier::new(&[]).unwrap()
}

fn aws() -> usize {
    classifier().class_index("aws-access-key").unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn places(found: &[Found], class: usize) -> Vec<String> {
    found
        .iter()
        .find(|f| f.class == class)
        .map(|f| f.places.iter().map(Place::label).collect())
        .unwrap_or_default()
}

fn scan_body(body: &Body) -> Vec<String> {
    places(&scan(&classifier(), body, None, &HeaderMap::new()), aws())
}

#[test]
fn compressed_bodies_are_read_inside() {
    let json = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{KEY}"}}]}}"#);
    let raw = Bytes::from(gzip(json.as_bytes()));
    let body = read_body(&raw, Some("application/json"), Some("gzip"), true);
    assert_eq!(body.codings, ["gzip"]);
    assert!(body.json().is_some());
    assert_eq!(scan_body(&body), ["body"]);
    // Undeclared but sniffed.
    let body = read_body(&raw, Some("application/json"), None, true);
    assert_eq!(scan_body(&body), ["body"]);
    // Declared but broken, or unknown: unreadable.
    for (coding, bytes) in [("gzip", json.as_bytes().to_vec()), ("compress", gzip(b"x"))] {
        let body = read_body(&Bytes::from(bytes), None, Some(coding), true);
        assert!(body.unreadable().is_some(), "{coding}");
    }
}

#[test]
fn bodies_that_are_not_json_where_json_is_read_are_unreadable() {
    let utf16: Vec<u8> = "{\"a\":\"x\"}"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    for raw in [
        utf16,
        b"{\"a\": NaN}".to_vec(),
        b"{\"a\": \"\xff\"}".to_vec(),
        b"{\"a\": 1".to_vec(),
        format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
    ] {
        let body = read_body(&Bytes::from(raw.clone()), None, None, true);
        assert!(
            body.unreadable().is_some(),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let bom = read_body(
        &Bytes::from_static(b"\xEF\xBB\xBF{\"a\":1}"),
        None,
        None,
        true,
    );
    assert!(bom.json().is_some(), "a BOM is ignored, as RFC 8259 allows");
    let text = read_body(
        &Bytes::from_static(b"plain words"),
        Some("text/plain"),
        None,
        false,
    );
    assert!(matches!(text.form, Form::Text));
}

#[test]
fn every_place_is_scanned_and_named() {
    let mut headers = HeaderMap::new();
    headers.insert("x-note", HeaderValue::from_static("AKIAQWERTYUIOPASDFGH"));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer AKIAQWERTYUIOPASDFGH"),
    );
    let json =
        format!(r#"{{"metadata":{{"{KEY}":"v"}},"messages":["see AKIAQWER","TYUIOPASDFGH ok"]}}"#);
    let body = read_body(&Bytes::from(json), None, None, true);
    let found = scan(
        &classifier(),
        &body,
        Some(&format!("a=1&note={KEY}&key={KEY}")),
        &headers,
    );
    assert_eq!(
        places(&found, aws()),
        ["body-key", "joined", "query", "header:x-note"]
    );
    assert_eq!(
        found[0].count, 4,
        "the credential query parameter and header are not counted"
    );
}

#[test]
fn multipart_parts_and_forms_are_scanned() {
    let part = gzip(format!("{{\"custom_id\":\"1\",\"body\":\"{KEY}\"}}\n").as_bytes());
    let mut raw = b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl.gz\"\r\n\r\n".to_vec();
    raw.extend_from_slice(&part);
    raw.extend_from_slice(b"\r\n--b--\r\n");
    let body = read_body(
        &Bytes::from(raw),
        Some("multipart/form-data; boundary=b"),
        None,
        false,
    );
    assert_eq!(scan_body(&body), ["part:file"]);
    let form = read_body(
        &Bytes::from_static(b"text=AKIA%51WERTYUIOPASDFGH"),
        Some("application/x-www-form-urlencoded"),
        None,
        false,
    );
    assert_eq!(scan_body(&form), ["form"]);
}

#[test]
fn a_secret_used_as_a_name_is_not_written_as_a_label() {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::HeaderName::from_static("akiaqwertyuiopasdfgh"),
        HeaderValue::from_static("x"),
    );
    let body = read_body(&Bytes::new(), None, None, false);
    let found = scan(&classifier(), &body, None, &headers);
    for f in &found {
        for p in &f.places {
            assert!(!p.label().to_ascii_uppercase().contains(KEY), "{p:?}");
        }
    }
}
