//! Dot-stuffing for re-emission: turns message content into the DATA wire
//! form (RFC 5321 §4.5.2) that the relay sends upstream.
//!
//! The output is rebuilt from canonical lines (security.md §1, outbound): every
//! line ends in CRLF, a line starting with `.` gets a second `.`, and the
//! output ends with exactly one CRLF.CRLF. Content from our decoders is already
//! canonical; for anything else, a bare LF becomes a CRLF (the next line is
//! then stuffed like any other), and a bare CR or a NUL is dropped, so neither
//! can ever reach the upstream server.

/// Appends the dot-stuffed wire form of `content`, terminator included.
/// Empty content gives just `.` CRLF, since the DATA command's CRLF counts
/// as the first half of the terminator.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + content.len() / 64 + 5);
    let mut stuffer = DotStuffer::new();
    stuffer.push(content, out);
    stuffer.finish(out);
}

/// Dot-stuffing for content that arrives in pieces (a message streamed from the spool): the
/// same output as [`dot_stuff`] on the concatenated pieces, whatever the split points.
/// Every CR is dropped and every LF written as CRLF, so the only state across pieces is whether
/// a line has just started.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of the content.
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
        }
    }

    /// Appends the wire form of the next piece of content.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let mut rest = piece;
        while !rest.is_empty() {
            // Inside a line, everything up to the next CR, LF or NUL is copied as it is.
            let run = if self.at_line_start {
                0
            } else {
                memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len())
            };
            let (plain, tail) = rest.split_at(run);
            out.extend_from_slice(plain);
            let Some((&b, tail)) = tail.split_first() else {
                return;
            };
            rest = tail;
            self.octet(b, out);
        }
    }

    /// One octet at a line start or a line end.
    fn octet(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' | 0 => {}
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
            }
            _ => {
                if b == b'.' && self.at_line_start {
                    out.push(b'.');
                }
                out.push(b);
                self.at_line_start = false;
            }
        }
    }

    /// Ends the content: a final CRLF if the last line lacked one, then `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(content, &mut out);
        out
    }

    #[test]
    fn wire_forms() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
            (b"a.b\r\n", b"a.b\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
            // Non-canonical input is made canonical, never passed through.
            (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\r\n", b"a.\r\n.\r\n"),
            (b"a\0b\r\n", b"ab\r\n.\r\n"),
            (b"x\r\n.\r", b"x\r\n..\r\n.\r\n"),
        ];
        for (content, wire) in table {
            assert_eq!(stuffed(content), *wire, "{content:?}");
            for split in 0..=content.len() {
                let mut out = Vec::new();
                let mut stuffer = DotStuffer::new();
                stuffer.push(&content[..split], &mut out);
                stuffer.push(&content[split..], &mut out);
                stuffer.finish(&mut out);
                assert_eq!(out, *wire, "{content:?} split at {split}");
            }
        }
    }
}
