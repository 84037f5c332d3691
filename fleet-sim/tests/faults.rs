//! The faults scenario end to end (CI), in two worker processes of the real `flotilla-sim`
//! binary: damaged downloads and destroyed model files are refused by the agents' own checks
//! and reported with their step; a spool too small for an outage drops its oldest windows and
//! counts them (with their requests); devices whose clock is two days ahead install and serve
//! but the hub refuses their windows as from the future, counted by reason with their
//! requests; a clock 90 s behind loses nothing; a slow lossy link and a crash lose nothing
//! else.

use std::path::Path;

use flotilla_sim::{RunOptions, Scenario, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_caught_counted_and_reconciled() {
    let scenario =
        Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/faults.toml"))
            .unwrap();
    let options = RunOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_flotilla-sim").into()),
        ..RunOptions::embedded()
    };
    let report = run(&scenario, options, &|_| {}).await.unwrap();
    let summary = report.summary();
    assert_eq!(report.resources.processes, 2, "{summary}");
    assert!(
        report.resources.hub.is_some(),
        "with workers, the hub's process is measured apart: {summary}"
    );
    // 40 devices damage half their downloads and lose a tenth of their installed files; the
    // other 100 install (skewed clocks included). Every failure is the agent's own check.
    let i = &report.installs;
    assert_eq!(i.installed + i.failed + i.pending, 140, "{summary}");
    assert_eq!(i.pending, 0, "{summary}");
    assert!(i.installed >= 100 && i.failed >= 5, "{summary}");
    let damaged = i
        .failures
        .get("check_artifact: artifact does not match its signed manifest")
        .copied()
        .unwrap_or(0);
    let unloadable: usize = i
        .failures
        .iter()
        .filter(|(why, _)| why.starts_with("load:"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(damaged + unloadable, i.failed, "{summary}");
    assert!(damaged > 0, "{summary}");
    // The full spools dropped windows, counted; everything else arrived exactly once.
    let t = &report.telemetry;
    assert!(t.reconciled, "{summary}");
    assert!(t.dropped > 0 && t.lost == 0, "{summary}");
    assert!(report.requests.dropped_with_windows > 0, "{summary}");
    // Only the clock two days ahead is refused: ten devices, a window every 2 s each.
    assert_eq!(t.refused.keys().collect::<Vec<_>>(), ["clock"], "{summary}");
    assert!(t.refused["clock"] >= 50, "{summary}");
    assert!(report.requests.refused_with_windows > 0, "{summary}");
    assert!(report.requests.reconciled, "{summary}");
    assert!(
        report
            .timeline
            .iter()
            .any(|e| e.what.starts_with("cohort satellite crashed")),
        "{summary}"
    );
}
