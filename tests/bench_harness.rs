//! The benchmark harness runs (small N) and prints a well-formed table. The numbers themselves
//! are not checked here: timings on a shared CI machine prove nothing (README has a real run).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn the_harness_runs_and_prints_a_well_formed_table() {
    if !std::path::Path::new("/usr/sbin/sshd").exists() {
        panic!("openssh-server is not installed (scripts/test.sh installs it)");
    }
    let out_json = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/bench.py"))
        .args(["--quick", "--gateway", BIN])
        .env("BENCH_OUT", out_json.path());
    let out = run(cmd, Duration::from_secs(400));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("| measure | gateway | sshd | gateway/sshd |"),
        "{stdout}"
    );
    for row in [
        "| connect + auth + true |",
        "| PTY throughput",
        "script piped into sshd's ssh -T |",
        "| channel throughput, no PTY",
        "| server CPU per GB |",
        "| keystroke echo",
        "idle PTY sessions |",
        "| device flow",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row) || l.contains(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{stdout}"));
        assert_eq!(line.matches('|').count(), 5, "four columns: {line}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_json.path()).unwrap()).unwrap();
    let m = &v["metrics"]["connect + auth + true"];
    assert!(m["gateway"]["median"].as_f64().unwrap() > 0.0);
    assert!(m["sshd"]["median"].as_f64().unwrap() > 0.0);
    assert_eq!(m["gateway"]["n"], 8);
    // Every kept run's hypervisor steal is reported, one entry per interleaved connect round.
    let steal = &v["steal"];
    assert_eq!(steal["kept_runs"]["connect"]["n"], 8, "{steal}");
    assert!(
        steal["kept_runs"]["pty"]["median_pct"].as_f64().is_some(),
        "{steal}"
    );
    assert!(steal["reruns"].as_u64().is_some(), "{steal}");
    assert!(
        stdout.contains("CPU time stolen by the hypervisor during the kept runs: connect median"),
        "{stdout}"
    );
    let idle = &v["metrics"]["10 idle PTY sessions"];
    assert_eq!(idle["gateway"]["accepted"], 10);
    // Every process the harness started is gone.
    let leftover = Command::new("pgrep")
        .args(["-f", "hermes-bench-"])
        .output()
        .unwrap();
    assert!(leftover.stdout.is_empty(), "{}", text(&leftover.stdout));
}
