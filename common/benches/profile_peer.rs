//! Reference and drift profiles, Flotilla vs whylogs, on the same data in one run
//! (docs/BENCHMARKS.md): profiling speed in rows per second, profile size, and how close KS
//! from each tool's sketches comes to the exact two-sample KS on the raw columns.
//!
//! `cargo bench -p flotilla-common --bench profile_peer -- [--rounds R] [--rows N]`
//!
//! Data: every feature of scikit-learn's breast-cancer data in tests/fixtures/breast_cancer.csv,
//! resampled to N rows (default 10^5) by drawing whole rows with a fixed-seed generator and
//! adding to each value a uniform jitter of up to ±2% of its column's standard deviation (so the
//! resample has no artificial ties, as in tests/it/drift_accuracy.rs). The current file is a
//! second, independent resample with the first feature shifted by +0.5σ; the other features are
//! unchanged in distribution, so their exact KS is sampling noise. Both go to CSV in a temp
//! folder; Flotilla reads them with `read_table` and profiles them with `profile_table`, and the
//! peer script (deploy/bench/whylogs_peer.py, run with `.cache/peer-venv`'s python, made by
//! deploy/bench-peer-setup.sh) reads them with pandas and profiles them with `why.log`.
//! Times are the median of R rounds (default 5) after one untimed warm-up round; KS errors
//! cover every feature in every timed round (KLL compaction is randomised in both tools).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use flotilla_common::compression::compress;
use flotilla_common::sketch::{DEVICE_K, NumericProfile, Profile, REFERENCE_K, numeric_drift};
use flotilla_common::telemetry::{
    NamedProfile, Table, encode_reference, profile_table, read_table,
};
use serde_json::Value;

/// Shift of the first feature in the current file, in reference standard deviations.
const SHIFT_SIGMA: f64 = 0.5;
/// Jitter added to each resampled value: uniform within ± this fraction of σ.
const JITTER_SIGMA: f64 = 0.02;

struct Options {
    rounds: usize,
    rows: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    Options {
        rounds: value("--rounds").unwrap_or(5).max(1),
        rows: value("--rows").unwrap_or(100_000).max(1),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// A deterministic generator (SplitMix64), so every run profiles the same files.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The fixture's header and columns (all numeric).
fn fixture() -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/breast_cancer.csv"),
    )
    .expect("read tests/fixtures/breast_cancer.csv");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let names: Vec<String> = lines
        .next()
        .expect("a header row")
        .split(',')
        .map(|n| n.trim().to_owned())
        .collect();
    let mut columns = vec![Vec::new(); names.len()];
    for line in lines {
        for (column, value) in columns.iter_mut().zip(line.split(',')) {
            column.push(value.trim().parse().expect("numeric fixture"));
        }
    }
    (names, columns)
}

/// `rows` whole rows drawn from the fixture, jittered, with feature 0 moved by `shift`σ.
fn resample(columns: &[Vec<f64>], rows: usize, seed: u64, shift: f64) -> Vec<Vec<f32>> {
    let source_rows = columns[0].len();
    let sigmas: Vec<f64> = columns
        .iter()
        .map(|c| {
            let mean = c.iter().sum::<f64>() / c.len() as f64;
            (c.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c.len() as f64).sqrt()
        })
        .collect();
    let mut rng = Rng(seed);
    let mut out = vec![Vec::with_capacity(rows); columns.len()];
    for _ in 0..rows {
        let row = (rng.next() % source_rows as u64) as usize;
        for (f, column) in columns.iter().enumerate() {
            let jitter = (rng.unit() * 2.0 - 1.0) * JITTER_SIGMA * sigmas[f];
            let moved = if f == 0 { shift * sigmas[f] } else { 0.0 };
            out[f].push((column[row] + jitter + moved) as f32);
        }
    }
    out
}

/// CSV with a header; f32 `Display` is the shortest text that parses back to the same f32.
fn write_csv(path: &Path, names: &[String], columns: &[Vec<f32>]) {
    let mut text = names.join(",");
    text.push('\n');
    for r in 0..columns[0].len() {
        for (f, column) in columns.iter().enumerate() {
            if f > 0 {
                text.push(',');
            }
            write!(text, "{}", column[r]).unwrap();
        }
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the bench CSV");
}

/// Exact two-sample KS: the largest gap between the two empirical CDFs, swept over every
/// value of either sample.
fn exact_ks(reference: &[f32], current: &[f32]) -> f64 {
    let mut r = reference.to_vec();
    let mut c = current.to_vec();
    r.sort_by(f32::total_cmp);
    c.sort_by(f32::total_cmp);
    let (nr, nc) = (r.len() as f64, c.len() as f64);
    let (mut i, mut j, mut ks) = (0, 0, 0.0f64);
    while i < r.len() || j < c.len() {
        let x = match (r.get(i), c.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => unreachable!(),
        };
        while i < r.len() && r[i] <= x {
            i += 1;
        }
        while j < c.len() && c[j] <= x {
            j += 1;
        }
        ks = ks.max((i as f64 / nr - j as f64 / nc).abs());
    }
    ks
}

/// Median seconds of `rounds` timed calls after one untimed warm-up, and every timed result.
fn timed<T>(rounds: usize, mut action: impl FnMut() -> T) -> (f64, Vec<T>) {
    action();
    let mut seconds = Vec::with_capacity(rounds);
    let mut results = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let result = action();
        seconds.push(start.elapsed().as_secs_f64());
        results.push(result);
    }
    (median(&mut seconds), results)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn numeric(profile: &NamedProfile) -> &NumericProfile {
    match &profile.profile {
        Profile::Numeric(p) => p,
        Profile::Categorical(_) => panic!("{} was profiled as categorical", profile.name),
    }
}

/// One tool and sketch setting: seconds and bytes per file (reference, current).
#[derive(Clone)]
struct Row {
    name: String,
    read_seconds: [f64; 2],
    profile_seconds: [f64; 2],
    encoded_bytes: [usize; 2],
    compressed_bytes: [usize; 2],
    kll_bytes: [usize; 2],
}

impl Row {
    fn rows_per_second(&self, rows: usize) -> f64 {
        2.0 * rows as f64 / (self.profile_seconds[0] + self.profile_seconds[1])
    }
    fn read_and_profile_rows_per_second(&self, rows: usize) -> f64 {
        2.0 * rows as f64
            / (self.profile_seconds.iter().sum::<f64>() + self.read_seconds.iter().sum::<f64>())
    }
}

/// Largest and mean |sketch − exact| over every round and feature.
fn errors(sketch: &[Vec<f64>], exact: &[f64]) -> (f64, f64) {
    let differences: Vec<f64> = sketch
        .iter()
        .flat_map(|round| round.iter().zip(exact).map(|(s, e)| (s - e).abs()))
        .collect();
    let max = differences.iter().copied().fold(0.0, f64::max);
    (
        max,
        differences.iter().sum::<f64>() / differences.len() as f64,
    )
}

struct Flotilla {
    row: Row,
    /// Per timed round, the profiles of (reference, current).
    rounds: Vec<(Vec<NamedProfile>, Vec<NamedProfile>)>,
}

fn profile_flotilla(
    tables: &[Table; 2],
    read_seconds: [f64; 2],
    k: u16,
    rounds: usize,
) -> Flotilla {
    let (reference_seconds, reference_rounds) = timed(rounds, || profile_table(&tables[0], &[], k));
    let (current_seconds, current_rounds) = timed(rounds, || profile_table(&tables[1], &[], k));
    let sizes = |profiles: &[NamedProfile], rows: usize| {
        let encoded = encode_reference(rows as u64, profiles);
        let compressed = compress(&encoded).expect("zstd").len();
        let kll: usize = profiles.iter().map(|p| numeric(p).kll_bytes().len()).sum();
        (encoded.len(), compressed, kll)
    };
    let (re, rc, rk) = sizes(&reference_rounds[0], tables[0].rows);
    let (ce, cc, ck) = sizes(&current_rounds[0], tables[1].rows);
    Flotilla {
        row: Row {
            name: format!("Flotilla, KLL k={k} (f32)"),
            read_seconds,
            profile_seconds: [reference_seconds, current_seconds],
            encoded_bytes: [re, ce],
            compressed_bytes: [rc, cc],
            kll_bytes: [rk, ck],
        },
        rounds: reference_rounds.into_iter().zip(current_rounds).collect(),
    }
}

/// KS per round and feature from Flotilla's sketches: reference from `reference`'s rounds,
/// current from `current`'s.
fn flotilla_ks(reference: &Flotilla, current: &Flotilla) -> Vec<Vec<f64>> {
    reference
        .rounds
        .iter()
        .zip(&current.rounds)
        .map(|((r, _), (_, c))| {
            r.iter()
                .zip(c)
                .map(|(r, c)| numeric_drift(numeric(r), numeric(c)).expect("values").ks)
                .collect()
        })
        .collect()
}

/// Runs the whylogs script; `None` (with the reason on stderr) when the peer cannot run.
fn run_peer(reference: &Path, current: &Path, out_dir: &Path, rounds: usize) -> Option<Value> {
    let python = std::env::var_os("FLOTILLA_BENCH_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/peer-venv/bin/python"));
    if !python.exists() {
        eprintln!(
            "peer skipped: {} not found (run deploy/bench-peer-setup.sh)",
            python.display()
        );
        return None;
    }
    let check = Command::new(&python)
        .args(["-c", "import whylogs, pandas, scipy"])
        .env("WHYLOGS_NO_ANALYTICS", "True")
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "peer skipped: whylogs, pandas or scipy is missing from {} (run deploy/bench-peer-setup.sh): {}",
                python.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("peer skipped: cannot run {}: {e}", python.display());
            return None;
        }
    }
    let script = repo_root().join("deploy/bench/whylogs_peer.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(reference)
        .arg(current)
        .arg("--out-dir")
        .arg(out_dir)
        .args([
            "--rounds",
            &rounds.to_string(),
            "--small-k",
            &DEVICE_K.to_string(),
        ])
        .env("WHYLOGS_NO_ANALYTICS", "True")
        .output()
        .expect("run the whylogs peer");
    if !output.status.success() {
        eprintln!(
            "peer skipped: {} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    match serde_json::from_slice(&output.stdout) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("peer skipped: its output is not JSON ({e})");
            None
        }
    }
}

fn f64s(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

fn pair_f64(value: &Value) -> [f64; 2] {
    [
        value["reference"].as_f64().expect("reference"),
        value["current"].as_f64().expect("current"),
    ]
}

fn pair_usize(value: &Value) -> [usize; 2] {
    let [r, c] = pair_f64(value);
    [r as usize, c as usize]
}

fn main() {
    let options = options();
    let (names, source) = fixture();
    let folder = tempfile::tempdir().expect("a temp folder");
    let paths = [
        folder.path().join("reference.csv"),
        folder.path().join("current.csv"),
    ];
    let raw = [
        resample(&source, options.rows, 2026, 0.0),
        resample(&source, options.rows, 2027, SHIFT_SIGMA),
    ];
    write_csv(&paths[0], &names, &raw[0]);
    write_csv(&paths[1], &names, &raw[1]);
    let exact: Vec<f64> = raw[0]
        .iter()
        .zip(&raw[1])
        .map(|(r, c)| exact_ks(r, c))
        .collect();

    println!(
        "machine: {}; {} rows × {} features per file ({} source rows), median of {} rounds after a warm-up",
        machine(),
        options.rows,
        names.len(),
        source[0].len(),
        options.rounds
    );

    let (reference_read, mut tables) = timed(options.rounds, || read_table(&paths[0]).unwrap());
    let (current_read, mut current_tables) =
        timed(options.rounds, || read_table(&paths[1]).unwrap());
    let tables = [tables.remove(0), current_tables.remove(0)];
    assert!(
        tables
            .iter()
            .all(|t| t.rows == options.rows && t.names == names)
    );
    let read_seconds = [reference_read, current_read];

    let device = profile_flotilla(&tables, read_seconds, DEVICE_K, options.rounds);
    let reference = profile_flotilla(&tables, read_seconds, REFERENCE_K, options.rounds);

    let peer = run_peer(&paths[0], &paths[1], folder.path(), options.rounds);

    let mut rows: Vec<(Row, (f64, f64))> = vec![
        (
            device.row.clone(),
            errors(&flotilla_ks(&device, &device), &exact),
        ),
        (
            reference.row.clone(),
            errors(&flotilla_ks(&reference, &reference), &exact),
        ),
    ];
    let deployed_errors = errors(&flotilla_ks(&reference, &device), &exact);
    let mut peer_ks: Vec<(String, Vec<f64>)> = Vec::new();
    if let Some(peer) = &peer {
        let read_seconds = pair_f64(&peer["read_csv_seconds"]);
        for config in peer["configs"].as_array().expect("configs") {
            let files = &config["profile_files"];
            let compressed = |side: &str| {
                let bytes = std::fs::read(files[side].as_str().expect("a path")).expect("read");
                compress(&bytes).expect("zstd").len()
            };
            let k = config["kll_k"].as_u64().expect("kll_k");
            let name = if config["label"] == "default" {
                format!("whylogs defaults, KLL k={k} (f64)")
            } else {
                format!("whylogs, KLL k={k} (f64)")
            };
            let ks: Vec<Vec<f64>> = config["ks_sketch"]
                .as_array()
                .expect("ks_sketch")
                .iter()
                .map(f64s)
                .collect();
            peer_ks.push((name.clone(), ks[0].clone()));
            rows.push((
                Row {
                    name,
                    read_seconds,
                    profile_seconds: pair_f64(&config["log_seconds"]),
                    encoded_bytes: pair_usize(&config["profile_bytes"]),
                    compressed_bytes: [compressed("reference"), compressed("current")],
                    kll_bytes: pair_usize(&config["kll_bytes"]),
                },
                errors(&ks, &exact),
            ));
        }
    }

    println!();
    println!(
        "| profiler | profile rows/s | read CSV + profile rows/s | profile bytes | zstd bytes | KLL bytes | KS max error | KS mean error |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (row, (max, mean)) in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {:.4} | {:.4} |",
            row.name,
            row.rows_per_second(options.rows),
            row.read_and_profile_rows_per_second(options.rows),
            row.encoded_bytes[0],
            row.compressed_bytes[0],
            row.kll_bytes[0],
            max,
            mean
        );
    }
    println!(
        "(rows/s over both files; bytes are the reference file's profile; KS errors over {} features × {} rounds)",
        names.len(),
        options.rounds
    );
    println!(
        "Flotilla as deployed, reference k={REFERENCE_K} vs current k={DEVICE_K}: KS max error {:.4}, mean {:.4}",
        deployed_errors.0, deployed_errors.1
    );

    println!();
    println!("| file | profiler | read s | profile s | profile bytes | zstd bytes | KLL bytes |");
    println!("|---|---|---|---|---|---|---|");
    for (side, i) in [("reference", 0), ("current", 1)] {
        for (row, _) in &rows {
            println!(
                "| {side} | {} | {:.3} | {:.3} | {} | {} | {} |",
                row.name,
                row.read_seconds[i],
                row.profile_seconds[i],
                row.encoded_bytes[i],
                row.compressed_bytes[i],
                row.kll_bytes[i]
            );
        }
    }

    println!();
    let first_round = |f: &Flotilla| flotilla_ks(f, f).remove(0);
    let mut header = format!(
        "| feature | exact KS | Flotilla k={DEVICE_K} | Flotilla k={REFERENCE_K} | Flotilla {REFERENCE_K}/{DEVICE_K}"
    );
    for (name, _) in &peer_ks {
        write!(header, " | {name}").unwrap();
    }
    println!("{header} |");
    println!("{}|", "|---".repeat(5 + peer_ks.len()));
    let columns_ks = [
        first_round(&device),
        first_round(&reference),
        flotilla_ks(&reference, &device).remove(0),
    ];
    for (f, name) in names.iter().enumerate() {
        let mut line = format!("| {name} | {:.4}", exact[f]);
        for ks in columns_ks
            .iter()
            .map(|c| c[f])
            .chain(peer_ks.iter().map(|(_, k)| k[f]))
        {
            write!(line, " | {ks:.4}").unwrap();
        }
        println!("{line} |");
    }
    println!("(first timed round)");

    println!();
    match &peer {
        Some(peer) => {
            let scipy = f64s(&peer["ks_exact_scipy"]);
            let disagreement = scipy
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!(
                "peer: whylogs {}, pandas {}, scipy {}, Python {}; whylogs metrics per column: {}",
                peer["whylogs"].as_str().unwrap_or("?"),
                peer["pandas"].as_str().unwrap_or("?"),
                peer["scipy"].as_str().unwrap_or("?"),
                peer["python"].as_str().unwrap_or("?"),
                peer["configs"][0]["metrics"]
            );
            println!(
                "exact KS: this bench vs scipy.stats.ks_2samp, largest difference {disagreement:.2e}"
            );
            let find = |prefix: &str| rows.iter().find(|(r, _)| r.name.starts_with(prefix));
            for (ours, theirs) in [
                (
                    format!("Flotilla, KLL k={REFERENCE_K}"),
                    "whylogs defaults".to_owned(),
                ),
                (
                    format!("Flotilla, KLL k={DEVICE_K}"),
                    format!("whylogs, KLL k={DEVICE_K}"),
                ),
            ] {
                if let (Some((a, ae)), Some((b, be))) = (find(&ours), find(&theirs)) {
                    println!(
                        "{ours} vs {theirs}: profiling {:.1}x the rows/s ({:.1}x with CSV reading), profile bytes {:.2}x, zstd bytes {:.2}x, KS max error {:.4} vs {:.4}",
                        a.rows_per_second(options.rows) / b.rows_per_second(options.rows),
                        a.read_and_profile_rows_per_second(options.rows)
                            / b.read_and_profile_rows_per_second(options.rows),
                        a.encoded_bytes[0] as f64 / b.encoded_bytes[0] as f64,
                        a.compressed_bytes[0] as f64 / b.compressed_bytes[0] as f64,
                        ae.0,
                        be.0
                    );
                }
            }
        }
        None => println!("peer: not measured (see the message above)"),
    }
}
