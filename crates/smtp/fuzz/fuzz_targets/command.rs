//! Fuzzes `parse_command` on raw bytes and on the bytes remapped onto the
//! SMTP alphabet, so delimiters turn up often (security.md §15).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp::{Line, LineReader, parse_command};

/// The characters that steer the command grammar.
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz:=-<>,;@. \r\n\"[]+";

fn check(line: &[u8]) {
    for utf8 in [false, true] {
        if let Ok(command) = parse_command(line, utf8) {
            // Accepted commands never carry control characters.
            assert!(!line.iter().any(|&b| b < 0x20 || b == 0x7f));
            // Their canonical form parses back to the same command.
            let canonical = command.to_string();
            if let Ok(again) = parse_command(canonical.as_bytes(), true) {
                assert_eq!(again.to_string(), canonical);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mapped: Vec<u8> = data
        .iter()
        .map(|&b| {
            ALPHABET
                .get(usize::from(b) % ALPHABET.len())
                .copied()
                .unwrap_or(b' ')
        })
        .collect();
    check(&mapped);
    // The line reader over the same bytes: lines are bounded and CR/LF free.
    let mut reader = LineReader::new(512);
    let mut input = mapped;
    loop {
        let before = input.len();
        match reader.next_line(&mut input) {
            Line::Incomplete => break,
            Line::Complete(line) => {
                assert!(line.len() <= 510);
                assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
                check(&line);
            }
            Line::TooLong | Line::BareLineEnding => {}
        }
        assert!(input.len() < before, "the reader made no progress");
    }
});
