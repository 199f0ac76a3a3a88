//! Message content decoders: the dot-terminated DATA stream (RFC 5321
//! §4.1.1.4, §4.5.2) and counted BDAT chunks (RFC 3030 §2).
//!
//! The end of DATA is only the exact bytes CR LF `.` CR LF, where the first
//! CRLF may be the one that ended the DATA command (security.md §1). Both
//! decoders check the content as it streams past: bare LF or CR, NUL, undeclared
//! 8-bit data, text lines over 998 octets, the size limit and the number of
//! `Received:` headers. The first violation decides the reply; from then on the
//! content is discarded, but the decoder keeps reading until the real end so the
//! session never returns to command mode in the middle of a message. Content is
//! handed out in pieces of at most 64 KiB, never buffered whole.

use crate::reply::Reply;

/// Largest [`DataEvent::Content`] piece.
pub const MAX_PIECE: usize = 64 * 1024;

/// Limits and declarations that govern one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLimits {
    /// Largest message in octets (after un-stuffing); beyond it, `552 5.3.4`.
    pub max_size: u64,
    /// Most `Received:` header lines allowed (RFC 5321 §6.3); beyond, `554 5.4.6`.
    pub max_received_headers: usize,
    /// 8-bit octets allowed: `BODY=8BITMIME` or `BINARYMIME` was declared
    /// (RFC 6152 §3). Otherwise they get `554 5.6.0`.
    pub eight_bit_allowed: bool,
    /// Longest text line, CRLF included: 1000 (RFC 5321 §4.5.3.1.6). Longer
    /// lines get `554 5.6.0`; they are never truncated (security.md §8).
    pub max_line: usize,
}

impl DataLimits {
    /// RFC defaults for a message of at most `max_size` octets.
    pub fn new(max_size: u64) -> DataLimits {
        DataLimits {
            max_size,
            max_received_headers: 50,
            eight_bit_allowed: false,
            max_line: 1000,
        }
    }
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// The content is acceptable; store it.
    Ok,
    /// The content was refused with this reply; discard what was received.
    Rejected(Reply),
}

/// What [`DataDecoder::decode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataEvent {
    /// Un-stuffed message bytes, at most 64 KiB.
    Content(Vec<u8>),
    /// The end of data was read; bytes after it remain in the input.
    End(DataOutcome),
    /// Everything given has been consumed; read more input.
    NeedInput,
}

/// Checks content bytes as they stream past and collects the acceptable
/// ones. Shared by DATA (after un-stuffing) and BDAT.
#[derive(Debug, Clone)]
struct ContentChecker {
    limits: DataLimits,
    rejected: Option<Reply>,
    /// A CR was seen; the next byte decides whether it was bare.
    pending_cr: bool,
    /// Octets in the current line so far, CRLF excluded.
    line_len: usize,
    /// Still in the header section (before the first empty line).
    in_headers: bool,
    /// The first octets of the current line, to spot `Received:`. Only read in the header
    /// section, so runs of plain text in the body may leave it stale.
    prefix: [u8; 9],
    received: usize,
    /// Content octets seen, acceptable or not.
    bytes: u64,
    piece: Vec<u8>,
}

impl ContentChecker {
    fn new(limits: DataLimits) -> ContentChecker {
        ContentChecker {
            limits,
            rejected: None,
            pending_cr: false,
            line_len: 0,
            in_headers: true,
            prefix: [0; 9],
            received: 0,
            bytes: 0,
            piece: Vec::new(),
        }
    }

    /// The first violation wins; acceptable content collected so far is
    /// dropped, as the driver discards the message anyway.
    fn reject(&mut self, reply: Reply) {
        if self.rejected.is_none() {
            self.rejected = Some(reply);
            self.piece = Vec::new();
        }
    }

    fn push(&mut self, b: u8) {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' {
                self.end_line();
                return;
            }
            self.reject(Reply::bare_line_ending());
            self.text_byte(b'\r');
        }
        match b {
            b'\r' => self.pending_cr = true,
            b'\n' => {
                self.reject(Reply::bare_line_ending());
                self.text_byte(b);
            }
            _ => self.text_byte(b),
        }
    }

    /// A CRLF ended a line.
    fn end_line(&mut self) {
        if self.line_len == 0 {
            self.in_headers = false;
        }
        self.line_len = 0;
        self.emit(b'\r');
        self.emit(b'\n');
    }

    /// An octet inside a line.
    fn text_byte(&mut self, b: u8) {
        if b == 0 {
            self.reject(Reply::nul_in_data());
        } else if b >= 0x80 && !self.limits.eight_bit_allowed {
            self.reject(Reply::not_declared_8bit());
        }
        if let Some(slot) = self.prefix.get_mut(self.line_len) {
            *slot = b;
            if self.line_len + 1 == self.prefix.len() {
                self.count_received_header();
            }
        }
        self.line_len = self.line_len.saturating_add(1);
        if self.line_len + 2 > self.limits.max_line {
            self.reject(Reply::data_line_too_long());
        }
        self.emit(b);
    }

    /// Loop detection by counting `Received:` headers (RFC 5321 §6.3).
    fn count_received_header(&mut self) {
        if self.in_headers && self.prefix.eq_ignore_ascii_case(b"received:") {
            self.received += 1;
            if self.received > self.limits.max_received_headers {
                self.reject(Reply::loop_detected());
            }
        }
    }

    fn emit(&mut self, b: u8) {
        self.bytes = self.bytes.saturating_add(1);
        if self.bytes > self.limits.max_size {
            self.reject(Reply::message_too_big(self.limits.max_size));
        }
        if self.rejected.is_none() {
            self.piece.push(b);
        }
    }

    /// How many octets at the start of `bytes` are plain text that [`Self::push_plain`] may
    /// take in one go: no CR, LF, NUL or undeclared 8-bit octet, within the line, size and
    /// piece limits, and not the first octets of a header line (which may be `Received:`).
    /// Zero when the byte-by-byte path must decide. The search for the octets that end a run
    /// is vectorised (`memchr`), as most content is long runs of plain text.
    fn plain_run(&self, bytes: &[u8]) -> usize {
        let prefix_pending = self.in_headers && self.line_len < self.prefix.len();
        if self.pending_cr || prefix_pending {
            return 0;
        }
        let line_room = self
            .limits
            .max_line
            .saturating_sub(2)
            .saturating_sub(self.line_len);
        let size_room = self.limits.max_size.saturating_sub(self.bytes);
        let piece_room = MAX_PIECE.saturating_sub(self.piece.len());
        let max = bytes
            .len()
            .min(line_room)
            .min(usize::try_from(size_room).unwrap_or(usize::MAX))
            .min(piece_room);
        let window = bytes.get(..max).unwrap_or_default();
        let end = memchr::memchr3(b'\r', b'\n', 0, window).unwrap_or(window.len());
        let text = window.get(..end).unwrap_or_default();
        if self.limits.eight_bit_allowed || text.is_ascii() {
            end
        } else {
            text.iter().position(|&b| b >= 0x80).unwrap_or(end)
        }
    }

    /// Takes the two octets of a CRLF at the start of `bytes` in one step, when no CR is
    /// pending: the same effect as pushing both. Returns whether it did.
    fn line_break(&mut self, bytes: &[u8]) -> bool {
        if self.pending_cr || !bytes.starts_with(b"\r\n") {
            return false;
        }
        self.end_line();
        true
    }

    /// Takes a run that [`Self::plain_run`] measured: the same effect as pushing each octet.
    fn push_plain(&mut self, run: &[u8]) {
        self.line_len = self.line_len.saturating_add(run.len());
        self.bytes = self.bytes.saturating_add(run.len() as u64);
        if self.rejected.is_none() {
            self.piece.extend_from_slice(run);
        }
    }

    /// Reserves room in the piece for up to `available` more octets (at most a full piece),
    /// so that a piece grows once per input rather than doubling octet by octet.
    fn make_room(&mut self, available: usize) {
        if self.rejected.is_none() {
            let room = MAX_PIECE.saturating_sub(self.piece.len());
            self.piece.reserve(available.min(room));
        }
    }

    /// Whether the piece must be handed out before the next step: a step adds at most two
    /// octets (a CRLF), so a piece with less room than that is full.
    fn piece_full(&self) -> bool {
        self.piece.len() + 2 > MAX_PIECE
    }

    fn take_piece(&mut self) -> Option<Vec<u8>> {
        if self.piece.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.piece))
        }
    }

    /// The outcome at the end of the message; a CR still pending was bare.
    fn finish(&mut self) -> DataOutcome {
        if std::mem::take(&mut self.pending_cr) {
            self.reject(Reply::bare_line_ending());
        }
        match &self.rejected {
            Some(reply) => DataOutcome::Rejected(reply.clone()),
            None => DataOutcome::Ok,
        }
    }
}

/// Where the DATA decoder is relative to line starts and the terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// Just after a CRLF (or the DATA command's CRLF).
    LineStart,
    /// A `.` at line start: stuffing, or the terminator's dot.
    Dot,
    /// `.` CR at line start: LF now ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    TextCr,
    /// CRLF.CRLF was read.
    Ended,
}

/// Decodes the DATA stream after the `354`: finds the end, un-stuffs dots,
/// checks the content.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: DotState,
    checker: ContentChecker,
    outcome: Option<DataOutcome>,
}

impl DataDecoder {
    /// A decoder for one message, positioned right after the DATA command's
    /// CRLF.
    pub fn new(limits: DataLimits) -> DataDecoder {
        DataDecoder {
            state: DotState::LineStart,
            checker: ContentChecker::new(limits),
            outcome: None,
        }
    }

    /// Content octets seen so far (after un-stuffing), accepted or not.
    pub fn bytes(&self) -> u64 {
        self.checker.bytes
    }

    /// Whether the content has already been refused (it is then discarded
    /// until the end).
    pub fn is_rejected(&self) -> bool {
        self.checker.rejected.is_some()
    }

    /// Consumes bytes from the front of `input` and reports the next event.
    /// After `End`, bytes that followed the terminator remain in `input`, and
    /// further calls report the same `End`.
    pub fn decode(&mut self, input: &mut Vec<u8>) -> DataEvent {
        if let Some(outcome) = &self.outcome {
            return match self.checker.take_piece() {
                Some(piece) => DataEvent::Content(piece),
                None => DataEvent::End(outcome.clone()),
            };
        }
        self.checker.make_room(input.len());
        let mut consumed = 0;
        while let Some(rest) = input.get(consumed..).filter(|r| !r.is_empty()) {
            let run = match self.state {
                DotState::Text | DotState::Dot => self.checker.plain_run(rest),
                DotState::LineStart if rest.first() != Some(&b'.') => self.checker.plain_run(rest),
                _ => 0,
            };
            if let Some(plain) = rest.get(..run).filter(|p| !p.is_empty()) {
                // Plain text at a line start, after a stuffing dot (dropped), or inside a
                // line: the line goes on as text.
                self.checker.push_plain(plain);
                self.state = DotState::Text;
                consumed += run;
            } else if self.state == DotState::Text && self.checker.line_break(rest) {
                self.state = DotState::LineStart;
                consumed += 2;
            } else if let Some(&b) = rest.first() {
                consumed += 1;
                self.step(b);
            }
            if self.state == DotState::Ended || self.checker.piece_full() {
                break;
            }
        }
        input.drain(..consumed);
        if self.state == DotState::Ended {
            let outcome = self.checker.finish();
            self.outcome = Some(outcome.clone());
            if self.checker.rejected.is_some() {
                return DataEvent::End(outcome);
            }
        }
        match self.checker.take_piece() {
            Some(piece) => DataEvent::Content(piece),
            None => match &self.outcome {
                Some(outcome) => DataEvent::End(outcome.clone()),
                None => DataEvent::NeedInput,
            },
        }
    }

    /// One wire octet through the dot layer (RFC 5321 §4.5.2).
    fn step(&mut self, b: u8) {
        use DotState::*;
        self.state = match (self.state, b) {
            (LineStart, b'.') => Dot,
            (Dot, b'\r') => DotCr,
            (DotCr, b'\n') => Ended,
            (DotCr, _) => {
                // ".\r" then not LF: the CR was bare; carry on inside the line.
                self.checker.push(b'\r');
                self.text(b)
            }
            (Ended, _) => Ended,
            (LineStart | Dot | Text, _) => self.text(b),
            (TextCr, _) => {
                self.checker.push(b);
                match b {
                    b'\n' => LineStart,
                    b'\r' => TextCr,
                    _ => Text,
                }
            }
        };
    }

    fn text(&mut self, b: u8) -> DotState {
        self.checker.push(b);
        if b == b'\r' {
            DotState::TextCr
        } else {
            DotState::Text
        }
    }
}

/// What [`BdatDecoder::decode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdatEvent {
    /// Message bytes from the chunk, at most 64 KiB.
    Content(Vec<u8>),
    /// The current chunk has been read completely.
    ChunkEnd,
    /// The chunk needs more input.
    NeedInput,
}

/// Reads BDAT chunks (RFC 3030 §2): exactly `size` octets each, no
/// un-stuffing, with the same content checks as DATA over the concatenation
/// (a CR ending one chunk may be followed by the LF starting the next).
#[derive(Debug, Clone)]
pub struct BdatDecoder {
    checker: ContentChecker,
    remaining: u64,
}

impl BdatDecoder {
    /// A decoder for one message; call [`BdatDecoder::begin_chunk`] for each
    /// BDAT command.
    pub fn new(limits: DataLimits) -> BdatDecoder {
        BdatDecoder {
            checker: ContentChecker::new(limits),
            remaining: 0,
        }
    }

    /// Starts a chunk of `size` octets.
    pub fn begin_chunk(&mut self, size: u64) {
        self.remaining = size;
    }

    /// Octets of the current chunk still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Content octets seen so far, accepted or not.
    pub fn bytes(&self) -> u64 {
        self.checker.bytes
    }

    /// Whether the content has already been refused.
    pub fn is_rejected(&self) -> bool {
        self.checker.rejected.is_some()
    }

    /// Consumes chunk bytes from the front of `input`, never past the chunk.
    pub fn decode(&mut self, input: &mut Vec<u8>) -> BdatEvent {
        let available = u64::try_from(input.len()).unwrap_or(u64::MAX);
        let wanted = usize::try_from(self.remaining.min(available)).unwrap_or(input.len());
        self.checker.make_room(wanted);
        let mut consumed = 0;
        while let Some(rest) = input.get(consumed..wanted).filter(|r| !r.is_empty()) {
            let run = self.checker.plain_run(rest);
            if let Some(plain) = rest.get(..run).filter(|p| !p.is_empty()) {
                self.checker.push_plain(plain);
                consumed += run;
            } else if self.checker.line_break(rest) {
                consumed += 2;
            } else if let Some(&b) = rest.first() {
                consumed += 1;
                self.checker.push(b);
            }
            if self.checker.piece_full() {
                break;
            }
        }
        input.drain(..consumed);
        self.remaining -= u64::try_from(consumed)
            .unwrap_or(self.remaining)
            .min(self.remaining);
        if let Some(piece) = self.checker.take_piece() {
            return BdatEvent::Content(piece);
        }
        if self.remaining == 0 {
            BdatEvent::ChunkEnd
        } else {
            BdatEvent::NeedInput
        }
    }

    /// The outcome after the LAST chunk.
    pub fn finish(&mut self) -> DataOutcome {
        self.checker.finish()
    }

    /// The refusal so far, if any (checked after each chunk).
    pub fn rejection(&self) -> Option<Reply> {
        self.checker.rejected.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DataLimits {
        DataLimits {
            max_size: 1000,
            max_received_headers: 2,
            eight_bit_allowed: false,
            max_line: 1000,
        }
    }

    /// Runs the decoder over `chunks`; returns content, outcome code and
    /// what was left in the input.
    fn run(limits: DataLimits, chunks: &[&[u8]]) -> (Vec<u8>, Option<String>, Vec<u8>) {
        let mut decoder = DataDecoder::new(limits);
        let mut input = Vec::new();
        let mut content = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            input.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut input) {
                    DataEvent::Content(piece) => {
                        assert!(piece.len() <= MAX_PIECE);
                        content.extend(piece);
                    }
                    DataEvent::NeedInput => break,
                    DataEvent::End(outcome) => {
                        let code = match outcome {
                            DataOutcome::Ok => "ok".to_owned(),
                            DataOutcome::Rejected(r) => {
                                r.to_string().get(..9).unwrap_or("").to_owned()
                            }
                        };
                        // Later chunks arrive behind whatever was left.
                        for later in chunks.iter().skip(index + 1) {
                            input.extend_from_slice(later);
                        }
                        return (content, Some(code), input);
                    }
                }
            }
        }
        (content, None, input)
    }

    #[test]
    fn end_of_data_and_unstuffing() {
        // (input, content, outcome, left in the input)
        type Case<'a> = (&'a [u8], &'a [u8], Option<&'a str>, &'a [u8]);
        let table: &[Case] = &[
            (b".\r\n", b"", Some("ok"), b""),
            (b".\r\nQUIT\r\n", b"", Some("ok"), b"QUIT\r\n"),
            (b"a\r\n.\r\n", b"a\r\n", Some("ok"), b""),
            (b"..x\r\n.\r\n", b".x\r\n", Some("ok"), b""),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", Some("ok"), b""),
            (b"a\r\n.b\r\n.\r\nMAIL", b"a\r\nb\r\n", Some("ok"), b"MAIL"),
            (b"a\r\n\r\n.\r\n", b"a\r\n\r\n", Some("ok"), b""),
            (b"a\r\n.", b"a\r\n", None, b""),
            (b"a\r\n.\r", b"a\r\n", None, b""),
        ];
        for (input, content, outcome, rest) in table {
            let got = run(limits(), &[input]);
            assert_eq!(
                got,
                (content.to_vec(), outcome.map(str::to_owned), rest.to_vec()),
                "{input:?}"
            );
        }
    }

    /// The smuggling sequences of security.md §1: none ends the data early;
    /// each is refused after the real CRLF.CRLF, and nothing after it leaks.
    #[test]
    fn smuggling_sequences_are_rejected_after_the_real_end() {
        let sequences: &[&[u8]] = &[
            b"\n.\n",
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n\0.\r\n",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
        ];
        for sequence in sequences {
            let mut input = b"Subject: x\r\n\r\nhello".to_vec();
            input.extend_from_slice(sequence);
            input.extend_from_slice(
                b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nspoof\r\n.\r\nQUIT\r\n",
            );
            let (content, outcome, rest) = run(limits(), &[&input]);
            assert!(content.is_empty(), "{sequence:?} leaked content");
            assert!(
                outcome.as_deref().is_some_and(|o| o.starts_with('5')),
                "{sequence:?}: {outcome:?}"
            );
            assert_eq!(rest, b"QUIT\r\n", "{sequence:?}");
        }
    }

    #[test]
    fn rejections() {
        let big = [b"x".repeat(999), b"\r\n.\r\n".to_vec()].concat();
        let long_line = [b"x".repeat(1000), b"\r\n.\r\n".to_vec()].concat();
        let ok_line = [b"x".repeat(998), b"\r\n.\r\n".to_vec()].concat();
        let loop3 = b"Received: a\r\nreceived: b\r\nRECEIVED: c\r\n\r\n.\r\n".to_vec();
        let loop_in_body = b"Received: a\r\nReceived: b\r\n\r\nReceived: c\r\n.\r\n".to_vec();
        let table: Vec<(Vec<u8>, DataLimits, &str)> = vec![
            (b"a\nb\r\n.\r\n".to_vec(), limits(), "550 5.5.2"),
            (b"a\rb\r\n.\r\n".to_vec(), limits(), "550 5.5.2"),
            (b"a\0b\r\n.\r\n".to_vec(), limits(), "554 5.6.0"),
            (b"caf\xc3\xa9\r\n.\r\n".to_vec(), limits(), "554 5.6.0"),
            (
                b"caf\xc3\xa9\r\n.\r\n".to_vec(),
                DataLimits {
                    eight_bit_allowed: true,
                    ..limits()
                },
                "ok",
            ),
            (
                big.clone(),
                DataLimits {
                    max_line: 2000,
                    ..limits()
                },
                "552 5.3.4",
            ),
            (
                big,
                DataLimits {
                    max_size: 1001,
                    max_line: 2000,
                    ..limits()
                },
                "ok",
            ),
            (
                long_line,
                DataLimits {
                    max_size: 5000,
                    ..limits()
                },
                "554 5.6.0",
            ),
            (
                ok_line,
                DataLimits {
                    max_size: 5000,
                    ..limits()
                },
                "ok",
            ),
            (loop3, limits(), "554 5.4.6"),
            (loop_in_body, limits(), "ok"),
            // First reason wins: bare LF before NUL.
            (b"a\nb\0\r\n.\r\n".to_vec(), limits(), "550 5.5.2"),
            (b"a\0b\n\r\n.\r\n".to_vec(), limits(), "554 5.6.0"),
        ];
        for (input, limits, expected) in table {
            let (content, outcome, _) = run(limits, &[&input]);
            assert_eq!(
                outcome.as_deref(),
                Some(expected),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            if expected != "ok" {
                assert!(content.is_empty());
            }
        }
    }

    #[test]
    fn every_split_point_finds_the_same_end() {
        let input: &[u8] = b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n";
        let whole = run(limits(), &[input]);
        assert_eq!(whole.0, b"Subject: x\r\n\r\n.dot\r\nline\r\n");
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(run(limits(), &[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(limits(), &bytes), whole);
    }

    /// `count` lines of `len` plain octets, each ending in CRLF.
    fn text_lines(count: usize, len: usize) -> Vec<u8> {
        let mut line = vec![b'y'; len];
        line.extend_from_slice(b"\r\n");
        line.repeat(count)
    }

    #[test]
    fn a_line_break_across_the_piece_limit_stays_within_the_pieces() {
        // 65 lines of 1000 octets, then 535 more: the next CRLF would end a piece one octet
        // over the limit. `run` and `bdat` check every piece.
        let mut content = text_lines(65, 998);
        content.extend_from_slice(&[b'y'; 535]);
        content.extend_from_slice(b"\r\nlast\r\n");
        let limits = DataLimits {
            max_size: 1 << 20,
            max_line: 1000,
            ..limits()
        };
        let mut wire = content.clone();
        wire.extend_from_slice(b".\r\n");
        let (data, outcome, _) = run(limits.clone(), &[&wire]);
        assert_eq!(
            (data.as_slice(), outcome.as_deref()),
            (content.as_slice(), Some("ok"))
        );
        let size = content.len() as u64;
        assert_eq!(
            bdat(limits, &[(&content, size)]),
            (content.clone(), "ok".to_owned())
        );
    }

    #[test]
    fn content_comes_in_bounded_pieces() {
        let mut input = text_lines(3000, 98);
        input.extend_from_slice(b".\r\n");
        let limits = DataLimits {
            max_size: 1 << 20,
            ..limits()
        };
        let (content, outcome, _) = run(limits, &[&input]);
        assert_eq!(content.len(), 300_000);
        assert_eq!(outcome.as_deref(), Some("ok"));
    }

    fn bdat(limits: DataLimits, chunks: &[(&[u8], u64)]) -> (Vec<u8>, String) {
        let mut decoder = BdatDecoder::new(limits);
        let mut content = Vec::new();
        for (bytes, size) in chunks {
            let mut input = bytes.to_vec();
            decoder.begin_chunk(*size);
            while let BdatEvent::Content(piece) = decoder.decode(&mut input) {
                assert!(piece.len() <= MAX_PIECE);
                content.extend(piece);
            }
        }
        let outcome = match decoder.finish() {
            DataOutcome::Ok => "ok".to_owned(),
            DataOutcome::Rejected(r) => r.to_string().get(..9).unwrap_or("").to_owned(),
        };
        (content, outcome)
    }

    #[test]
    fn bdat_chunks() {
        // (chunks with their BDAT sizes, content, outcome)
        type Case<'a> = (&'a [(&'a [u8], u64)], &'a [u8], &'a str);
        let table: &[Case] = &[
            (&[(b"a\r\n.\r\n", 6)], b"a\r\n.\r\n", "ok"),
            (&[(b"a\r", 2), (b"\nb\r\n", 4)], b"a\r\nb\r\n", "ok"),
            // "a" was acceptable when its chunk ended; the driver discards it.
            (&[(b"a\r", 2), (b"b\r\n", 3)], b"a", "550 5.5.2"),
            (&[(b"a\r", 2)], b"a", "550 5.5.2"),
            (&[(b"a\n", 2)], b"", "550 5.5.2"),
            (&[(b"a\0\r\n", 4)], b"", "554 5.6.0"),
            (&[(b"abc", 3)], b"abc", "ok"),
            (&[(b"", 0)], b"", "ok"),
        ];
        for (chunks, content, outcome) in table {
            let got = bdat(limits(), chunks);
            assert_eq!(got, (content.to_vec(), outcome.to_string()), "{chunks:?}");
        }
        let (_, outcome) = bdat(
            DataLimits {
                max_size: 4,
                ..limits()
            },
            &[(b"abc", 3), (b"de", 2)],
        );
        assert_eq!(outcome, "552 5.3.4");
    }

    #[test]
    fn bdat_never_reads_past_the_chunk() {
        let mut decoder = BdatDecoder::new(limits());
        decoder.begin_chunk(3);
        let mut input = b"abcQUIT\r\n".to_vec();
        assert_eq!(
            decoder.decode(&mut input),
            BdatEvent::Content(b"abc".to_vec())
        );
        assert_eq!(decoder.decode(&mut input), BdatEvent::ChunkEnd);
        assert_eq!(input, b"QUIT\r\n");
        assert_eq!(decoder.bytes(), 3);
    }
}
