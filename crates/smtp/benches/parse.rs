//! Micro-benchmarks of the hot pure code: command parsing and DATA / BDAT decoding on the
//! receiving side, dot-stuffing on the sending side (`cargo bench -p smtp --bench parse`).
//! Throughput is reported in bytes per second so a decoder's cost can be compared with the
//! sink's and the disk's (docs/PERFORMANCE.md).
#![allow(missing_docs)] // benchmark functions are not API
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark set-up

use divan::Bencher;
use divan::counter::BytesCount;
use smtp::data::BdatEvent;
use smtp::{BdatDecoder, DataDecoder, DataEvent, DataLimits, LineReader, parse_command};

fn main() {
    divan::main();
}

/// Command lines as a printer, a script or Postfix sends them (without CRLF).
const COMMANDS: &[(&str, &str)] = &[
    ("ehlo", "EHLO printer-3f.contoso.local"),
    (
        "mail",
        "MAIL FROM:<scanner@contoso.com> SIZE=20480 BODY=8BITMIME",
    ),
    ("rcpt", "RCPT TO:<accounts.payable@example.net>"),
    (
        "rcpt_dsn",
        "RCPT TO:<a@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.net",
    ),
    ("data", "DATA"),
    ("quit", "QUIT"),
];

#[divan::bench(args = COMMANDS.iter().map(|(name, _)| *name))]
fn command(bencher: Bencher, name: &str) {
    let line = COMMANDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, l)| l.as_bytes())
        .unwrap();
    bencher
        .counter(BytesCount::new(line.len()))
        .bench(|| parse_command(divan::black_box(line), false));
}

/// A pipelined MAIL/RCPT/DATA burst through the line framer.
#[divan::bench]
fn line_reader_pipelined(bencher: Bencher) {
    let burst = b"MAIL FROM:<scanner@contoso.com> SIZE=1024\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n".to_vec();
    bencher
        .counter(BytesCount::new(burst.len()))
        .with_inputs(|| burst.clone())
        .bench_local_refs(|input| {
            let mut reader = LineReader::new(1000);
            let mut lines = 0;
            while let smtp::Line::Complete(_) = reader.next_line(input) {
                lines += 1;
            }
            lines
        });
}

/// A message of about `size` octets: headers, then 76-character text lines, some starting
/// with a dot (stuffed on the wire), ending in the terminator.
fn wire_message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: <scanner@contoso.com>\r\nTo: <a@example.net>\r\nSubject: scan\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < size {
        if i % 50 == 0 {
            m.extend_from_slice(b"..a stuffed line\r\n");
        }
        m.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n",
        );
        i += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

const SIZES: &[usize] = &[1024, 20 * 1024, 1024 * 1024];

/// What one `decode` call returned, without the decoder's own event type.
enum Step {
    Content(usize),
    End,
    NeedInput,
}

/// Feeds `wire` as the daemon does (16 KiB reads appended to the input buffer) to `decode`
/// until it reports the end; returns the content octets it produced.
fn feed(wire: &[u8], mut decode: impl FnMut(&mut Vec<u8>) -> Step) -> usize {
    let mut input = Vec::with_capacity(32 * 1024);
    let mut out = 0;
    for chunk in wire.chunks(16 * 1024) {
        input.extend_from_slice(chunk);
        loop {
            match decode(&mut input) {
                Step::Content(len) => out += len,
                Step::End => return out,
                Step::NeedInput => break,
            }
        }
    }
    out
}

/// DATA decoding of the dot-stuffed message.
#[divan::bench(args = SIZES)]
fn data_decode(bencher: Bencher, size: usize) {
    let wire = wire_message(size);
    bencher.counter(BytesCount::new(wire.len())).bench(|| {
        let mut decoder = DataDecoder::new(DataLimits::new(64 << 20));
        feed(&wire, |input| match decoder.decode(input) {
            DataEvent::Content(piece) => Step::Content(piece.len()),
            DataEvent::End(_) => Step::End,
            DataEvent::NeedInput => Step::NeedInput,
        })
    });
}

/// BDAT decoding of one `BDAT n LAST` chunk of the same content (no dot layer).
#[divan::bench(args = SIZES)]
fn bdat_decode(bencher: Bencher, size: usize) {
    let wire = wire_message(size);
    bencher.counter(BytesCount::new(wire.len())).bench(|| {
        let mut decoder = BdatDecoder::new(DataLimits::new(64 << 20));
        decoder.begin_chunk(wire.len() as u64);
        feed(&wire, |input| match decoder.decode(input) {
            BdatEvent::Content(piece) => Step::Content(piece.len()),
            BdatEvent::ChunkEnd => Step::End,
            BdatEvent::NeedInput => Step::NeedInput,
        })
    });
}

/// Dot-stuffing the same content for an upstream without CHUNKING (the DATA wire form).
#[divan::bench(args = SIZES)]
fn dot_stuff(bencher: Bencher, size: usize) {
    let content = wire_message(size);
    bencher.counter(BytesCount::new(content.len())).bench(|| {
        let mut out = Vec::new();
        smtp::dot_stuff(divan::black_box(&content), &mut out);
        out.len()
    });
}
