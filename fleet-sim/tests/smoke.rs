//! The smoke scenario end to end (CI): 200 real agent cores and an embedded hub in this
//! process; a deployment, a cohort cut off for ten seconds, drift injected in another.

use std::path::Path;

use flotilla_sim::{RunOptions, Scenario, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_converges_reconciles_and_alerts() {
    let scenario =
        Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml"))
            .unwrap();
    let report = run(&scenario, RunOptions::embedded(), &|_| {})
        .await
        .unwrap();
    let summary = report.summary();
    assert_eq!(report.devices, 200);
    assert_eq!(
        (report.installs.installed, report.installs.failed),
        (200, 0),
        "{summary}"
    );
    assert!(
        report.installs.time_to_converge_seconds.is_some(),
        "{summary}"
    );
    // Every sealed window reached the hub once (the cut-off cohort's after it came back), and
    // the requests in them are exactly the requests the devices served.
    let t = &report.telemetry;
    assert!(t.reconciled, "{summary}");
    assert!(
        t.sealed > 1000 && t.dropped == 0 && t.lost == 0,
        "{summary}"
    );
    assert!(report.requests.reconciled, "{summary}");
    assert!(
        report.requests.served > 5000 && report.requests.failed == 0,
        "{summary}"
    );
    assert!(
        report
            .timeline
            .iter()
            .any(|e| e.what == "cohort boats cut off")
            && report
                .timeline
                .iter()
                .any(|e| e.what == "cohort boats back online"),
        "{summary}"
    );
    // The crash lost the requests of the boats' open windows, and only those.
    assert!(
        report
            .timeline
            .iter()
            .any(|e| e.what.starts_with("cohort boats crashed")),
        "{summary}"
    );
    assert!(report.requests.lost_in_crashes > 0, "{summary}");
    // The drift injected in a quarter of the fleet is alerted, naming the two features.
    assert_eq!(
        report.drift.drifted_features,
        ["sepal_length", "petal_length"],
        "{summary}"
    );
    assert!(report.drift.latency_seconds.is_some(), "{summary}");
}

#[test]
fn bad_scenarios_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        Scenario::load(&path).map(|_| ()).unwrap_err().to_string()
    };
    let base = "name = \"x\"\nduration_seconds = 1\n[model]\nname = \"m\"\nfile = \"m.onnx\"\nreference = \"r.csv\"\n";
    assert!(
        write(base).contains("cohorts"),
        "missing cohorts is a parse error"
    );
    let cohort = "[[cohorts]]\nname = \"a\"\ndevices = 1\nrequests_per_second = 1\n";
    assert!(
        write(&format!(
            "{base}{cohort}[[drift]]\ncohort = \"b\"\nfrom_seconds = 1\nfeature = \"f\"\n"
        ))
        .contains("cohort \"b\"")
    );
    assert!(
        write(&format!(
            "{base}{cohort}offline = [{{ from_seconds = 5, until_seconds = 5 }}]\n"
        ))
        .contains("empty")
    );
    assert!(write(&format!("{base}{cohort}unknown = 1\n")).contains("unknown"));
}
