//! A CRLF-strict, bounded reader of command lines.
//!
//! Only CR LF ends a line (RFC 5321 §2.3.8). A bare LF or a bare CR makes the
//! whole line unusable: it is reported once and discarded up to the next real
//! CRLF, so a bare line ending can never split one line into two commands
//! (security.md §1). A line longer than the limit is reported once and
//! discarded up to the next CRLF; it is never cut into several commands
//! (security.md §8). The reader holds no buffer of its own: it consumes from
//! the front of the caller's input and leaves the rest there.

/// Command line limit, CRLF included (RFC 5321 §4.5.3.1.4).
pub const COMMAND_LINE_LIMIT: usize = 512;

/// What [`LineReader::next_line`] found at the front of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its CRLF.
    Complete(Vec<u8>),
    /// The line is longer than the limit; its bytes are being discarded.
    TooLong,
    /// The line holds a bare LF or bare CR; its bytes are being discarded.
    BareLineEnding,
    /// No whole line yet: read more input and call again.
    Incomplete,
}

/// Splits CRLF-terminated lines off the front of an input buffer.
#[derive(Debug, Clone)]
pub struct LineReader {
    /// Longest line accepted, CRLF included.
    max_len: usize,
    /// After a bad line: drop input until the next CRLF.
    discarding: bool,
}

impl LineReader {
    /// A reader for lines of at most `max_len` octets, CRLF included.
    pub fn new(max_len: usize) -> LineReader {
        LineReader {
            max_len,
            discarding: false,
        }
    }

    /// Forgets any discarding in progress (after STARTTLS the input is new).
    pub fn reset(&mut self) {
        self.discarding = false;
    }

    /// Takes the next line off the front of `input`.
    pub fn next_line(&mut self, input: &mut Vec<u8>) -> Line {
        if self.discarding && !self.discard_to_crlf(input) {
            return Line::Incomplete;
        }
        let limit = self.max_len.saturating_sub(2);
        match find_line_end(input) {
            LineEnd::Crlf(at) if at > limit => {
                input.drain(..at + 2);
                Line::TooLong
            }
            LineEnd::Crlf(at) => {
                let line = input.get(..at).map(<[u8]>::to_vec).unwrap_or_default();
                input.drain(..at + 2);
                Line::Complete(line)
            }
            LineEnd::Bare(at) => {
                input.drain(..=at);
                self.discarding = true;
                if at > limit {
                    Line::TooLong
                } else {
                    Line::BareLineEnding
                }
            }
            LineEnd::None if input.len() > limit + 1 => {
                self.discarding = true;
                self.discard_to_crlf(input);
                Line::TooLong
            }
            LineEnd::None => Line::Incomplete,
        }
    }

    /// Drops input through the next CRLF; keeps a final CR that may be the
    /// first half of one. Returns whether the CRLF was found.
    fn discard_to_crlf(&mut self, input: &mut Vec<u8>) -> bool {
        match input.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                input.drain(..at + 2);
                self.discarding = false;
                true
            }
            None => {
                let keep = usize::from(input.last() == Some(&b'\r'));
                input.drain(..input.len() - keep);
                false
            }
        }
    }
}

/// Where the first line of the input ends.
enum LineEnd {
    /// At a CRLF starting at this index.
    Crlf(usize),
    /// At a bare LF, or a CR followed by something else, at this index.
    Bare(usize),
    /// Not yet known (no line ending, or a CR as the last byte).
    None,
}

fn find_line_end(input: &[u8]) -> LineEnd {
    let Some(at) = input.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return LineEnd::None;
    };
    match (input.get(at), input.get(at + 1)) {
        (Some(b'\r'), Some(b'\n')) => LineEnd::Crlf(at),
        (Some(b'\r'), None) => LineEnd::None,
        _ => LineEnd::Bare(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after another and collects every line event.
    fn read_all(max_len: usize, chunks: &[&[u8]]) -> (Vec<Line>, Vec<u8>) {
        let mut reader = LineReader::new(max_len);
        let mut input = Vec::new();
        let mut events = Vec::new();
        for chunk in chunks {
            input.extend_from_slice(chunk);
            loop {
                match reader.next_line(&mut input) {
                    Line::Incomplete => break,
                    event => events.push(event),
                }
            }
        }
        (events, input)
    }

    fn complete(line: &[u8]) -> Line {
        Line::Complete(line.to_vec())
    }

    #[test]
    fn framing() {
        // (chunks, events, left in the input)
        type Case<'a> = (&'a [&'a [u8]], Vec<Line>, &'a [u8]);
        let table: Vec<Case> = vec![
            (&[b"QUIT\r\n"], vec![complete(b"QUIT")], b""),
            (&[b"QU", b"IT\r", b"\n"], vec![complete(b"QUIT")], b""),
            (
                &[b"A\r\nB\r\nC"],
                vec![complete(b"A"), complete(b"B")],
                b"C",
            ),
            (&[b"\r\n"], vec![complete(b"")], b""),
            // Bare LF: the whole line up to the real CRLF is dropped.
            (
                &[b"MAIL FROM:<a>\nRCPT TO:<b>\r\nQUIT\r\n"],
                vec![Line::BareLineEnding, complete(b"QUIT")],
                b"",
            ),
            (
                &[b"A\rB\r\nC\r\n"],
                vec![Line::BareLineEnding, complete(b"C")],
                b"",
            ),
            (
                &[b"A\r", b"B\r\nC\r\n"],
                vec![Line::BareLineEnding, complete(b"C")],
                b"",
            ),
            (
                &[b"\n\r\nX\r\n"],
                vec![Line::BareLineEnding, complete(b"X")],
                b"",
            ),
            (
                &[b"A\r\r\nB\r\n"],
                vec![Line::BareLineEnding, complete(b"B")],
                b"",
            ),
            (
                &[b"A\n", b"B\r", b"\nC\r\n"],
                vec![Line::BareLineEnding, complete(b"C")],
                b"",
            ),
        ];
        for (chunks, expected, rest) in table {
            let (events, left) = read_all(512, chunks);
            assert_eq!(events, expected, "{chunks:?}");
            assert_eq!(left, rest, "{chunks:?}");
        }
    }

    #[test]
    fn too_long_is_reported_once_and_never_split() {
        let limit = 12; // 10 octets of text + CRLF
        let table: Vec<(Vec<Vec<u8>>, Vec<Line>)> = vec![
            (
                vec![b"0123456789\r\n".to_vec()],
                vec![complete(b"0123456789")],
            ),
            (
                vec![b"0123456789X\r\nQUIT\r\n".to_vec()],
                vec![Line::TooLong, complete(b"QUIT")],
            ),
            (
                vec![
                    b"0123456789".to_vec(),
                    b"XYZ".to_vec(),
                    b"RCPT".to_vec(),
                    b"\r".to_vec(),
                    b"\nQUIT\r\n".to_vec(),
                ],
                vec![Line::TooLong, complete(b"QUIT")],
            ),
            (
                vec![vec![b'x'; 100], b"\r\nQUIT\r\n".to_vec()],
                vec![Line::TooLong, complete(b"QUIT")],
            ),
            (
                vec![b"0123456789".to_vec(), b"\r".to_vec(), b"\n".to_vec()],
                vec![complete(b"0123456789")],
            ),
        ];
        for (chunks, expected) in table {
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let (events, left) = read_all(limit, &chunks);
            assert_eq!(events, expected, "{chunks:?}");
            assert!(left.is_empty());
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let input = b"EHLO a\r\nBAD\nLINE\r\nMAIL FROM:<>\r\nX\rY\r\nQUIT\r\n";
        let whole = read_all(512, &[input]).0;
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(read_all(512, &bytes).0, whole);
        assert_eq!(whole.len(), 5);
    }
}
