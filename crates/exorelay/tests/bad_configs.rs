//! Each directory under `tests/bad_configs/` holds a broken `exorelay.toml` and the
//! `expected-error` that `exorelay config check` must print: one line naming the file, the line
//! and column, and the field. Add a case by adding a directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;
use std::process::Command;

#[test]
fn every_bad_config_gives_one_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_configs");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 6,
        "expected the bad-config cases in {}",
        root.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let config = case.join("exorelay.toml");
        let expected = std::fs::read_to_string(case.join("expected-error")).unwrap();
        let expected = expected.trim_end();
        let out = Command::new(env!("CARGO_BIN_EXE_exorelay"))
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let ok = !out.status.success()
            && lines.len() == 1
            && lines[0].starts_with(&config.display().to_string())
            && lines[0].contains(expected)
            && !stderr.contains("panicked");
        println!(
            "{} {name}: {}",
            if ok { "ok  " } else { "FAIL" },
            stderr.trim_end()
        );
        if !ok {
            failures.push(format!(
                "{name}: expected one line containing {expected:?}, got {stderr:?} (status {})",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_annotated_example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/relay.toml");
    std::fs::copy(&example, dir.path().join("relay.toml")).unwrap();
    let pki = common::TestPki::new(dir.path(), "example");
    let (cert, key) = pki.leaf("relay", &["relay.contoso.com"]);
    assert!(cert.ends_with("relay.pem") && key.ends_with("relay.key"));
    pki.leaf("contoso", &["relay.contoso.com"]);
    std::fs::copy(&pki.ca_file, dir.path().join("extra-ca.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_exorelay"))
        .args(["config", "check"])
        .arg(dir.path().join("relay.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("upstream contoso"), "{stdout}");
}

mod common;
