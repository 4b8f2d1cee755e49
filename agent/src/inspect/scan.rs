//! Finding data classes in every place a request carries data.

use std::collections::{BTreeMap, BTreeSet};

use http::HeaderMap;

use super::{Body, Form, multipart::Part};
use crate::classify::{Classifier, JsonPlace};

/// Where in a request a finding was made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    /// A string value of a JSON body, or a text body.
    Body,
    /// An object key of a JSON body.
    BodyKey,
    /// Across adjacent strings of a JSON body.
    Joined,
    /// A field of an `application/x-www-form-urlencoded` body.
    Form,
    Query,
    /// A header, by name (or `header` alone when the name itself is suspect).
    Header(Option<String>),
    /// A part of a multipart body, by field name (or its position).
    Part(String),
}

impl Place {
    /// The name the audit and alerts use: `body`, `body-key`, `joined`,
    /// `form`, `query`, `header:<name>`, `part:<field>`.
    pub fn label(&self) -> String {
        match self {
            Place::Body => "body".into(),
            Place::BodyKey => "body-key".into(),
            Place::Joined => "joined".into(),
            Place::Form => "form".into(),
            Place::Query => "query".into(),
            Place::Header(Some(name)) => format!("header:{name}"),
            Place::Header(None) => "header".into(),
            Place::Part(name) => format!("part:{name}"),
        }
    }

    /// Whether a finding here can be replaced in place: inside a JSON string
    /// or a text body. Anywhere else a `redact` rule refuses the request.
    pub fn redactable(&self) -> bool {
        matches!(self, Place::Body | Place::BodyKey)
    }
}

/// One class found in a request: how often and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub class: usize,
    pub count: usize,
    pub places: BTreeSet<Place>,
}

/// Headers that are the provider's own credentials (the gateway replaces or
/// fingerprints them; they go to the provider whatever they hold), and the
/// framing headers the proxy itself interprets.
const NOT_SCANNED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "x-amz-date",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
];

/// Query parameters that are the provider's own credential (Gemini's `key`).
const QUERY_CREDENTIALS: &[&str] = &["key"];

/// Longest header or field name shown in a place label.
const LABEL_MAX: usize = 40;

#[derive(Default)]
struct Tally(BTreeMap<usize, (usize, BTreeSet<Place>)>);

impl Tally {
    fn add(&mut self, class: usize, count: usize, place: Place) {
        let entry = self.0.entry(class).or_default();
        entry.0 += count;
        entry.1.insert(place);
    }

    fn text(&mut self, classifier: &Classifier, text: &str, place: &Place) {
        for (class, n) in classifier.scan_counts(text) {
            self.add(class, n, place.clone());
        }
    }

    fn json(&mut self, classifier: &Classifier, bytes: &[u8], place: Option<&Place>) -> bool {
        let Some(hits) = classifier.read_json(bytes) else {
            return false;
        };
        for (class, at, n) in hits {
            let place = place.cloned().unwrap_or(match at {
                JsonPlace::Value => Place::Body,
                JsonPlace::Key => Place::BodyKey,
                JsonPlace::Joined => Place::Joined,
            });
            self.add(class, n, place);
        }
        true
    }
}

/// Every data class found in the request, sorted by class.
pub fn scan(
    classifier: &Classifier,
    body: &Body,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Vec<Found> {
    let mut tally = Tally::default();
    match &body.form {
        Form::Empty => {}
        Form::Json(_) => {
            if !tally.json(classifier, &body.bytes, None) {
                // serde_json read it, so the reader does too (they accept the
                // same documents); should they ever disagree, fall back to
                // the text rather than see nothing.
                tally.text(
                    classifier,
                    &String::from_utf8_lossy(&body.bytes),
                    &Place::Body,
                );
            }
        }
        Form::Text | Form::Binary | Form::Unreadable(_) => {
            tally.text(
                classifier,
                &String::from_utf8_lossy(&body.bytes),
                &Place::Body,
            );
        }
        Form::UrlEncoded => {
            for (name, value) in form_urlencoded::parse(&body.bytes) {
                tally.text(classifier, &name, &Place::Form);
                tally.text(classifier, &value, &Place::Form);
            }
        }
        Form::Multipart(parts) => {
            for (i, part) in parts.iter().enumerate() {
                scan_part(classifier, &mut tally, i, part);
            }
        }
    }
    // The query's and the headers' many short texts are scanned as one, a
    // line each: a scan has a fixed cost, and no single-line finding
    // crosses a line break.
    let mut lines = Lines::default();
    if let Some(query) = query {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            lines.push(&name, Place::Query);
            if !QUERY_CREDENTIALS.contains(&name.as_ref()) {
                lines.push(&value, Place::Query);
            }
        }
    }
    for (name, value) in headers {
        let name = name.as_str();
        if NOT_SCANNED.contains(&name) {
            continue;
        }
        // HTTP lower-cases header names; upper-case keys (AWS) survive
        // that as a case-folded copy the reader can fold back.
        let place = Place::Header(Some(name.to_string()));
        lines.push(name, place.clone());
        lines.push(&name.to_ascii_uppercase(), place.clone());
        lines.push(&String::from_utf8_lossy(value.as_bytes()), place);
    }
    lines.scan(classifier, &mut tally);
    tally
        .0
        .into_iter()
        .map(|(class, (count, places))| Found {
            class,
            count,
            places,
        })
        .collect()
}

/// Short texts joined a line each, with the place of each line.
#[derive(Default)]
struct Lines {
    text: String,
    /// (end offset in `text`, place) per line, in order.
    places: Vec<(usize, Place)>,
}

impl Lines {
    fn push(&mut self, line: &str, place: Place) {
        self.text.push_str(line);
        self.text.push('\n');
        self.places.push((self.text.len(), place));
    }

    fn scan(self, classifier: &Classifier, tally: &mut Tally) {
        if self.text.is_empty() {
            return;
        }
        for f in classifier.scan(&self.text) {
            let i = self.places.partition_point(|(end, _)| *end <= f.start);
            let Some((_, place)) = self.places.get(i) else {
                continue;
            };
            // A header named by a finding is labelled without its name.
            let place = match place {
                Place::Header(Some(name)) if label(classifier, name).is_none() => {
                    Place::Header(None)
                }
                other => other.clone(),
            };
            tally.add(f.class, 1, place);
        }
    }
}

/// A name fit for a label: short, and holding no finding itself (a secret
/// sent as a header or field name must not reach the audit as a label).
fn label(classifier: &Classifier, name: &str) -> Option<String> {
    let clean =
        classifier.scan(name).is_empty() && classifier.scan(&name.to_ascii_uppercase()).is_empty();
    (name.len() <= LABEL_MAX && clean).then(|| name.to_string())
}

fn scan_part(classifier: &Classifier, tally: &mut Tally, index: usize, part: &Part) {
    let place = Place::Part(label(classifier, &part.name).unwrap_or_else(|| format!("#{index}")));
    for (name, value) in &part.headers {
        if name != "content-type" {
            tally.text(classifier, value, &place);
        }
    }
    if tally.json(classifier, &part.data, Some(&place)) {
        return;
    }
    let text = String::from_utf8_lossy(&part.data);
    // JSON Lines (fine-tuning and batch files): each line read as JSON, so
    // escapes inside are decoded as the reader of the file will.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if !lines.is_empty()
        && lines
            .iter()
            .all(|l| serde_json::from_str::<serde::de::IgnoredAny>(l).is_ok())
    {
        for line in lines {
            tally.json(classifier, line.as_bytes(), Some(&place));
        }
        return;
    }
    tally.text(classifier, &text, &place);
}
