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
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.len() < MAX_EVENT {
                    self.line.push(byte);
                } else {
                    self.oversized = true;
                }
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                self.dispatch(&mut on_event);
            } else {
                self.field();
            }
            self.line.clear();
        }
    }

    fn field(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match name {
            "event" => self.event = value.to_string(),
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

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent)) {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.oversized) {
            return;
        }
        if !data.is_empty() || !event.is_empty() {
            on_event(SseEvent { event, data });
        }
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
