//! Scanning a body that is too large to hold, piece by piece, before each
//! piece leaves.
//!
//! The scanner holds back the last [`CARRY`] bytes of what it has seen:
//! they are scanned again with the next piece, so a finding split across
//! two pieces is whole in one window, and none of its bytes has been
//! released when it is found. A finding longer than `CARRY` (no built-in
//! class comes near it; a PEM private key of 16,384 bits is 13 KiB) could
//! straddle the released part and is not guaranteed to be found.

use memchr::memmem;

use super::encoding;
use crate::classify::Classifier;

/// Bytes held back and scanned again with the next piece.
pub const CARRY: usize = 64 << 10;

/// New bytes gathered before a scan: scanning the carry again costs
/// `CARRY / STEP` of a pass (a quarter).
pub const STEP: usize = 256 << 10;

/// Longest part header block looked for after a multipart delimiter.
const MAX_PART_HEAD: usize = 8 << 10;

/// What one scan found, and the bytes it let go.
#[derive(Debug, Default)]
pub struct Scanned {
    /// `(class, count)` of findings not seen in an earlier window.
    pub found: Vec<(usize, usize)>,
    /// A part the scan cannot read as its reader would (compressed,
    /// base64), and why.
    pub unreadable: Option<String>,
    /// Bytes scanned that may now be forwarded.
    pub release: Vec<u8>,
}

/// The scanning state of one streamed body.
pub struct StreamScan {
    buf: Vec<u8>,
    /// `buf[..scanned]` was scanned in an earlier window (the carry).
    scanned: usize,
    /// `\r\n--boundary` of a multipart body, whose part heads are checked.
    delimiter: Option<Vec<u8>>,
}

impl StreamScan {
    /// `boundary`: that of a multipart body, whose parts' headers are
    /// read as they pass.
    pub fn new(boundary: Option<&str>) -> StreamScan {
        StreamScan {
            buf: Vec::with_capacity(CARRY + STEP),
            scanned: 0,
            delimiter: boundary.map(|b| format!("--{b}").into_bytes()),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Enough new bytes gathered for a scan.
    pub fn ready(&self) -> bool {
        self.buf.len() - self.scanned >= STEP
    }

    /// Bytes held: pending and carried.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Scans what is held; `last`: the body has ended, so everything is
    /// released.
    pub fn scan(&mut self, classifier: &Classifier, last: bool) -> Scanned {
        let mut out = Scanned::default();
        if self.buf.len() == self.scanned && !last {
            return out;
        }
        let text = String::from_utf8_lossy(&self.buf);
        // The carry ends on a character boundary (see below), so its text
        // is a prefix of the window's.
        let seen = String::from_utf8_lossy(&self.buf[..self.scanned]).len();
        let mut counts = std::collections::BTreeMap::<usize, usize>::new();
        for finding in classifier.scan(&text) {
            if finding.end > seen {
                *counts.entry(finding.class).or_default() += 1;
            }
        }
        out.found = counts.into_iter().collect();
        out.unreadable = self.part_heads(last);
        let cut = if last {
            self.buf.len()
        } else {
            char_start(&self.buf, self.buf.len().saturating_sub(CARRY))
        };
        out.release = self.buf.drain(..cut).collect();
        self.scanned = self.buf.len();
        out
    }

    /// Every part of a multipart body whose head is in the window: one
    /// whose content its reader decodes (a content coding, a transfer
    /// encoding, compressed data) cannot be scanned as it streams.
    fn part_heads(&self, last: bool) -> Option<String> {
        let delimiter = self.delimiter.as_deref()?;
        for at in memmem::find_iter(&self.buf, delimiter) {
            let after = &self.buf[at + delimiter.len()..];
            if after.starts_with(b"--") {
                continue;
            }
            let Some(end) = memmem::find(after, b"\r\n\r\n")
                .map(|e| e + 4)
                .or_else(|| memmem::find(after, b"\n\n").map(|e| e + 2))
            else {
                if after.len() > MAX_PART_HEAD || last {
                    return Some("a multipart part's headers do not end".into());
                }
                // The rest of the head comes with the next piece; it is
                // in the carry until then.
                continue;
            };
            let head = String::from_utf8_lossy(&after[..end]).to_ascii_lowercase();
            for line in head.lines() {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match name.trim() {
                    "content-encoding" if !encoding::codings(value).is_empty() => {
                        return Some(format!(
                            "a streamed part has Content-Encoding `{value}`, which is not \
                             decoded as it streams"
                        ));
                    }
                    "content-transfer-encoding" if !matches!(value, "7bit" | "8bit" | "binary") => {
                        return Some(format!(
                            "a streamed part has Content-Transfer-Encoding `{value}`, which is \
                             not decoded as it streams"
                        ));
                    }
                    _ => {}
                }
            }
            if let Some(coding) = encoding::sniff(&after[end..]) {
                return Some(format!(
                    "a streamed part holds {coding}-compressed data, which is not decompressed \
                     as it streams"
                ));
            }
        }
        None
    }
}

/// `at`, or the start of the UTF-8 character `at` falls inside.
fn char_start(buf: &[u8], mut at: usize) -> usize {
    let floor = at.saturating_sub(3);
    while at > floor && at < buf.len() && buf[at] & 0xC0 == 0x80 {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AKIAQWERTYUIOPASDF12";

    fn classifier() -> Classifier {
        Classifier::new(&[]).unwrap()
    }

    /// Feeds `body` in pieces of `piece` bytes as a streamed body is fed;
    /// returns what was found, and how many bytes had been released
    /// before the first finding.
    fn run(body: &[u8], piece: usize) -> (Vec<(String, usize)>, Option<usize>, usize) {
        let c = classifier();
        let mut scan = StreamScan::new(None);
        let mut found = Vec::new();
        let (mut released, mut released_before) = (0, None);
        let mut chunks = body.chunks(piece).peekable();
        while let Some(chunk) = chunks.next() {
            scan.push(chunk);
            let last = chunks.peek().is_none();
            if scan.ready() || last {
                let s = scan.scan(&c, last);
                if !s.found.is_empty() && released_before.is_none() {
                    released_before = Some(released);
                }
                for (class, n) in s.found {
                    found.push((c.classes()[class].name.clone(), n));
                }
                released += s.release.len();
            }
        }
        (found, released_before, released)
    }

    fn filler(len: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .cycle()
            .take(len)
            .copied()
            .collect()
    }

    #[test]
    fn a_key_across_every_boundary_is_found_before_it_is_released() {
        // The key placed at each offset around the first window's end.
        for shift in 0..KEY.len() + 2 {
            let at = STEP - shift;
            let mut body = filler(at);
            body.push(b' ');
            let key_at = body.len();
            body.extend_from_slice(KEY.as_bytes());
            body.push(b' ');
            body.extend_from_slice(&filler(3 * STEP));
            for piece in [1000, 4096, STEP, 7 * 1024 + 3] {
                let (found, before, total) = run(&body, piece);
                assert_eq!(
                    found,
                    vec![("aws-access-key".to_string(), 1)],
                    "shift {shift}, pieces of {piece}: the key is found once"
                );
                assert!(
                    before.unwrap() <= key_at,
                    "shift {shift}, pieces of {piece}: {} bytes were released before the key \
                     at {key_at} was found",
                    before.unwrap()
                );
                assert_eq!(total, body.len(), "everything is released in the end");
            }
        }
    }

    #[test]
    fn a_key_at_the_start_or_the_very_end_is_found() {
        let mut body = KEY.as_bytes().to_vec();
        body.push(b' ');
        body.extend_from_slice(&filler(STEP * 2));
        assert_eq!(run(&body, 8192).0.len(), 1, "a key in the first bytes");
        let mut body = filler(STEP * 2 + 17);
        body.push(b' ');
        body.extend_from_slice(KEY.as_bytes());
        assert_eq!(run(&body, 8192).0.len(), 1, "a key in the last bytes");
    }

    #[test]
    fn binary_data_and_split_characters_do_not_hide_a_key() {
        let mut body: Vec<u8> = (0..STEP * 2).map(|i| (i * 7 % 251) as u8).collect();
        body.extend_from_slice("é€".repeat(1000).as_bytes());
        body.extend_from_slice(b"\n");
        body.extend_from_slice(KEY.as_bytes());
        body.extend_from_slice(b"\n");
        body.extend_from_slice("€".repeat(STEP).as_bytes());
        let (found, _, total) = run(&body, 1001);
        assert_eq!(found, vec![("aws-access-key".to_string(), 1)]);
        assert_eq!(total, body.len());
    }

    #[test]
    fn clean_text_is_released_with_a_bounded_carry() {
        let c = classifier();
        let mut scan = StreamScan::new(None);
        let mut released = 0;
        for _ in 0..20 {
            scan.push(&filler(STEP));
            assert!(scan.ready());
            let s = scan.scan(&c, false);
            assert!(s.found.is_empty());
            released += s.release.len();
            assert!(
                scan.held() <= CARRY,
                "only the carry is held between pieces"
            );
        }
        released += scan.scan(&c, true).release.len();
        assert_eq!(released, 20 * STEP);
    }

    #[test]
    fn parts_that_cannot_be_read_as_they_stream_are_named() {
        let c = classifier();
        for (head, data, says) in [
            ("Content-Encoding: gzip\r\n", &b"xx"[..], "Content-Encoding"),
            (
                "Content-Transfer-Encoding: base64\r\n",
                b"QUtJQQ==",
                "Transfer-Encoding",
            ),
            ("", &[0x1f, 0x8b, 8, 0][..], "gzip-compressed"),
        ] {
            let mut scan = StreamScan::new(Some("XyZ"));
            let mut body = filler(STEP);
            body.extend_from_slice(
                format!(
                    "\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; \
                     filename=\"a\"\r\n{head}\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            scan.push(&body);
            let why = scan.scan(&c, false).unreadable;
            assert!(
                why.as_deref().is_some_and(|w| w.contains(says)),
                "{head:?}: {why:?}"
            );
        }
        let mut scan = StreamScan::new(Some("XyZ"));
        scan.push(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nplain\r\n--XyZ--",
        );
        assert_eq!(scan.scan(&c, true).unreadable, None);
    }
}
