//! The data classifiers and JSON redaction on request bodies a local
//! application sent: findings must be sane spans, and a redacted body must
//! stay valid JSON with the same structure.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use modelgate::classify::{Classifier, JsonPlace};
use serde_json::Value;

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(|| {
        // A custom class beside the built-ins, as a policy would add.
        let custom = [("employee-id".to_owned(), r"\bEMP-[0-9]{6}\b".to_owned())];
        Classifier::new(&custom).expect("the built-in and test classes compile")
    })
}

/// The document with every string value emptied: what redaction must keep.
fn shape(value: &mut Value) {
    match value {
        Value::String(s) => s.clear(),
        Value::Array(items) => items.iter_mut().for_each(shape),
        Value::Object(map) => map.values_mut().for_each(shape),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: which classes to redact (bit i: classes i, i+8, ...).
    let Some((&mask, body)) = data.split_first() else {
        return;
    };
    let classifier = classifier();

    let text = String::from_utf8_lossy(body);
    let findings = classifier.scan(&text);
    let mut last_end = 0;
    for f in &findings {
        assert!(
            f.start < f.end && f.end <= text.len(),
            "finding {f:?} outside the text"
        );
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "finding {f:?} splits a character"
        );
        assert!(
            f.start >= last_end,
            "findings overlap or are unsorted: {findings:?}"
        );
        assert!(
            f.class < classifier.classes().len(),
            "unknown class in {f:?}"
        );
        last_end = f.end;
    }

    let _ = classifier.scan_json(body);

    let redact = |class: usize| mask & (1 << (class % 8)) != 0;
    let Some((out, counts)) = classifier.redact_json(body, redact) else {
        return;
    };
    assert!(!counts.is_empty(), "a rewritten body with nothing counted");
    // A redacted object key may fold two keys into one, which changes the
    // shape serde_json sees; values alone never do.
    let keys_found = classifier
        .read_json(body)
        .is_some_and(|hits| hits.iter().any(|&(_, at, _)| at == JsonPlace::Key));
    if keys_found {
        assert!(
            serde_json::from_slice::<Value>(body).is_err()
                || serde_json::from_slice::<Value>(&out).is_ok(),
            "redaction made valid JSON invalid: {:?}",
            String::from_utf8_lossy(&out)
        );
        return;
    }
    if let Ok(mut before) = serde_json::from_slice::<Value>(body) {
        let mut after = match serde_json::from_slice::<Value>(&out) {
            Ok(after) => after,
            Err(err) => panic!(
                "redaction made valid JSON invalid ({err}): {:?}",
                String::from_utf8_lossy(&out)
            ),
        };
        shape(&mut before);
        shape(&mut after);
        assert_eq!(before, after, "redaction changed the document's structure");
    }
});
