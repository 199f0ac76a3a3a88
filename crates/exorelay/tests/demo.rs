//! `exorelay demo` end to end: the six seed scenarios of exo-attribution.md §8, sent as real
//! SMTP straight to the simulated EXO (reproducing the before/after table) and through exorelay
//! (all relayed as Originating), parsed from the demo's JSON output.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;
use std::time::Instant;

fn cell(outcome: &serde_json::Value) -> String {
    if outcome["accepted"].as_bool().unwrap() {
        format!(
            "{}/{}",
            outcome["direction"].as_str().unwrap_or("?"),
            outcome["decided_by"].as_str().unwrap_or("?")
        )
    } else {
        let reply = outcome["reply"].as_str().unwrap();
        reply
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[test]
fn the_six_seed_scenarios_before_after_and_through_exorelay() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_exorelay"))
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let expected = [
        (
            1,
            "Originating/certificate_domain",
            "Originating/certificate_domain",
        ),
        (
            2,
            "Originating/certificate_domain",
            "Originating/certificate_domain",
        ),
        (3, "Originating/header_from_domain", "550 5.7.64"),
        (4, "Incoming/recipient_domain", "Incoming/recipient_domain"),
        (5, "Originating/header_from_domain", "550 5.7.64"),
        (6, "Originating/header_from_domain", "550 5.7.64"),
    ];
    assert_eq!(rows.len(), expected.len());
    for (row, (scenario, before, after)) in rows.iter().zip(expected) {
        let via = cell(&row["after_via_exorelay"]);
        println!(
            "{scenario}: before {} | after direct {} | via exorelay {via} ({})",
            cell(&row["before"]),
            cell(&row["after_direct"]),
            row["exorelay_changed"].as_str().unwrap()
        );
        assert_eq!(row["scenario"], scenario);
        assert_eq!(cell(&row["before"]), before, "scenario {scenario} before");
        assert_eq!(
            cell(&row["after_direct"]),
            after,
            "scenario {scenario} after, direct"
        );
        assert_eq!(
            via, "Originating/certificate_domain",
            "scenario {scenario} via exorelay"
        );
    }
    println!("demo took {:?}", started.elapsed());
}
