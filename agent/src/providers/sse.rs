//! Incremental server-sent-events parsing: bytes arrive in arbitrary
//! chunks; complete events come out. Only `event:` and `data:` matter here.

/// Longest event kept; a larger one is skipped (counted by the caller as
/// unparsed), so a hostile upstream cannot grow memory without bound.
const MAX_EVENT: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: String,
    oversized: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseParser {
    /// Feeds bytes; calls `on_event` for every event they complete.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(SseEvent)) {
        self.feed_borrowed(bytes, |event, data| {
            on_event(SseEvent {
                event: event.to_owned(),
                data: data.to_owned(),
            })
        });
    }

    /// [`feed`](Self::feed) without an allocation per event: `on_event`
    /// gets the event's name and data, valid for the call. A stream's
    /// observer takes every chunk of every answer through here.
    pub fn feed_borrowed(&mut self, mut bytes: &[u8], mut on_event: impl FnMut(&str, &str)) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            let line = &bytes[..end];
            bytes = &bytes[end + 1..];
            if self.line.is_empty() {
                // The usual case: the whole line is in this piece.
                let kept = &line[..line.len().min(MAX_EVENT)];
                self.oversized |= kept.len() < line.len();
                self.line_done(kept, &mut on_event);
            } else {
                self.extend_line(line);
                let held = std::mem::take(&mut self.line);
                self.line_done(&held, &mut on_event);
                self.line = held;
                self.line.clear();
            }
        }
        self.extend_line(bytes);
    }

    /// Holds the start of a line, up to the event limit.
    fn extend_line(&mut self, bytes: &[u8]) {
        let room = MAX_EVENT.saturating_sub(self.line.len());
        self.oversized |= bytes.len() > room;
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(&str, &str)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(on_event);
        } else {
            self.field(line);
        }
    }

    fn field(&mut self, line: &[u8]) {
        // Valid UTF-8 in all but hostile streams: checked at SIMD speed,
        // and only then read the slow, lossy way.
        let line = match std::str::from_utf8(line) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match name {
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            "data" => {
                if self.data.len() + value.len() > MAX_EVENT {
                    self.oversized = true;
                    return;
                }
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
    }

    /// Ends the event; its buffers are kept for the next one.
    fn dispatch(&mut self, on_event: &mut impl FnMut(&str, &str)) {
        if !std::mem::take(&mut self.oversized) && (!self.data.is_empty() || !self.event.is_empty())
        {
            on_event(&self.event, &self.data);
        }
        self.event.clear();
        self.data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |e| events.push(e));
        }
        events
    }

    #[test]
    fn events_split_across_chunks() {
        let events = parse(&[
            b"event: message_start\nda",
            b"ta: {\"a\":1}\n",
            b"\n: ping\n\ndata: [DONE]\r\n\r\n",
        ]);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "message_start".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn multi_line_data_joins_with_newlines() {
        let events = parse(&[b"data: a\ndata: b\n\n"]);
        assert_eq!(events[0].data, "a\nb");
    }

    #[test]
    fn oversized_events_are_dropped_not_buffered() {
        let mut parser = SseParser::default();
        let big = vec![b'x'; MAX_EVENT + 10];
        let mut events = Vec::new();
        parser.feed(b"data: ", |e| events.push(e));
        parser.feed(&big, |e| events.push(e));
        parser.feed(b"\n\ndata: ok\n\n", |e| events.push(e));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "ok");
        assert!(parser.line.capacity() <= MAX_EVENT * 2);
    }
}
