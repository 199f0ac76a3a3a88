//! Fuzzes the DATA decoder: arbitrary bytes in two chunkings must give the
//! same end of data, never panic, and leave the bytes after the end in the
//! input (security.md §1, §15).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp::{DataDecoder, DataEvent, DataLimits, DataOutcome};

/// Decodes `input` fed in pieces of `chunk` octets; returns the outcome and
/// the input left after the end.
fn decode(input: &[u8], chunk: usize) -> (Option<DataOutcome>, Vec<u8>) {
    let mut decoder = DataDecoder::new(DataLimits {
        max_size: 4096,
        max_received_headers: 3,
        eight_bit_allowed: input.first().is_some_and(|b| b & 1 == 1),
        max_line: 100,
    });
    let mut buffer = Vec::new();
    let mut pieces = input.chunks(chunk.max(1));
    loop {
        match decoder.decode(&mut buffer) {
            DataEvent::Content(piece) => assert!(!piece.is_empty() && piece.len() <= 64 * 1024),
            DataEvent::End(outcome) => {
                for rest in pieces {
                    buffer.extend_from_slice(rest);
                }
                return (Some(outcome), buffer);
            }
            DataEvent::NeedInput => match pieces.next() {
                Some(piece) => buffer.extend_from_slice(piece),
                None => return (None, buffer),
            },
        }
    }
}

/// Where CRLF.CRLF ends, the DATA command's CRLF counted.
fn reference_end(input: &[u8]) -> Option<usize> {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|at| at + 3)
}

fuzz_target!(|data: &[u8]| {
    let whole = decode(data, data.len());
    let bytewise = decode(data, 1 + data.len() / 7);
    assert_eq!(whole, bytewise);
    match reference_end(data) {
        Some(end) => {
            assert!(whole.0.is_some());
            assert_eq!(whole.1, data.get(end..).unwrap_or_default());
        }
        None => assert!(whole.0.is_none()),
    }
});
