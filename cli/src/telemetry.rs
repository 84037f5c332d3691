//! The telemetry half of the `flotilla` CLI: reference profiles, `profile`, `drift report`,
//! `health`, `events` and `capture export`. Tables for people, `--json` for scripts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use flotilla_api::AdminClient;
use flotilla_api::duration::DurationText;
use flotilla_api::telemetry::{
    Against, CaptureFormat, EventQuery, FeatureDrift, ModelThresholds, SliceParams,
};
use flotilla_common::sketch::{Profile, REFERENCE_K};
use flotilla_common::telemetry::{NamedProfile, profile_table, read_table};

use crate::commands::print_json;
use crate::format::{figure as fmt, optional, utc};

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Per-feature drift of a fleet slice against the version's reference or another version.
    Report {
        model: String,
        /// Version number or alias (default: the newest).
        #[arg(long)]
        version: Option<String>,
        /// Devices whose labels match, k=v[,k=v].
        #[arg(long)]
        selector: Option<String>,
        /// Only these devices, comma-separated ids.
        #[arg(long)]
        devices: Option<String>,
        /// Windows that ended within this long ago: 90s, 15m, 1h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Windows that ended at least this long ago.
        #[arg(long)]
        until: Option<String>,
        /// `reference` (training data) or `version:N` (the same slice on version N).
        #[arg(long, default_value = "reference")]
        against: String,
    },
    /// Show or set a model's drift thresholds (JSON: {"default": {...}, "features": {NAME: {...}}}).
    Thresholds {
        model: String,
        /// A JSON file to set; without it the current thresholds are shown.
        #[arg(long)]
        set: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Write a version's captured samples to a file.
    Export {
        model: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        out: PathBuf,
        /// ndjson or csv (default: from --out's extension, else ndjson).
        #[arg(long)]
        format: Option<String>,
    },
}

/// `flotilla profile FILE`: a local profile of a table, nothing sent anywhere.
pub fn print_profile(file: &Path, categorical: &[String], json: bool) -> anyhow::Result<()> {
    let table = read_table(file)?;
    let profiles: Vec<NamedProfile> = profile_table(&table, categorical, REFERENCE_K);
    if json {
        let features: Vec<serde_json::Value> = profiles
            .iter()
            .map(|p| match &p.profile {
                Profile::Numeric(n) => serde_json::json!({
                    "name": p.name, "kind": "numeric", "count": n.count, "nulls": n.nulls, "non_finite": n.non_finite,
                    "min": (n.valid() > 0).then_some(n.min), "max": (n.valid() > 0).then_some(n.max),
                    "mean": n.mean(), "std_dev": n.std_dev(), "p25": n.quantile(0.25), "median": n.quantile(0.5), "p75": n.quantile(0.75),
                }),
                Profile::Categorical(c) => serde_json::json!({
                    "name": p.name, "kind": "categorical", "count": c.count, "nulls": c.nulls,
                    "distinct": c.distinct(), "top": c.frequencies().into_iter().take(5).collect::<Vec<_>>(),
                }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"file": file, "rows": table.rows, "features": features})
            )?
        );
        return Ok(());
    }
    println!(
        "{}: {} rows, {} columns (KLL k={REFERENCE_K})",
        file.display(),
        table.rows,
        table.names.len()
    );
    println!(
        "{:<28} {:<11} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "FEATURE", "KIND", "COUNT", "MISSING", "MIN", "P25", "MEDIAN", "P75", "MAX", "STD"
    );
    for p in &profiles {
        match &p.profile {
            Profile::Numeric(n) => println!(
                "{:<28} {:<11} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                p.name,
                "numeric",
                n.count,
                n.nulls + n.non_finite,
                fmt((n.valid() > 0).then_some(n.min)),
                fmt(n.quantile(0.25)),
                fmt(n.quantile(0.5)),
                fmt(n.quantile(0.75)),
                fmt((n.valid() > 0).then_some(n.max)),
                fmt(n.std_dev())
            ),
            Profile::Categorical(c) => {
                let top: Vec<String> = c
                    .frequencies()
                    .into_iter()
                    .take(3)
                    .map(|(v, n)| format!("{v}:{n}"))
                    .collect();
                println!(
                    "{:<28} {:<11} {:>8} {:>7} distinct {:.0}, top {}",
                    p.name,
                    "categorical",
                    c.count,
                    c.nulls,
                    c.distinct(),
                    top.join(" ")
                )
            }
        }
    }
    Ok(())
}

fn print_feature_rows(rows: &[FeatureDrift]) {
    println!(
        "{:<28} {:<11} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  DRIFT",
        "FEATURE", "KIND", "REF ROWS", "ROWS", "KS", "W/SIGMA", "PSI", "JS", "HELL"
    );
    for f in rows {
        let drift = match f.drifted {
            Some(true) => "DRIFT".to_owned(),
            Some(false) => "ok".to_owned(),
            None => format!("- ({})", f.note.as_deref().unwrap_or("no verdict")),
        };
        let kind = match f.kind {
            flotilla_api::telemetry::FeatureKind::Numeric => "numeric",
            flotilla_api::telemetry::FeatureKind::Categorical => "categorical",
        };
        println!(
            "{:<28} {:<11} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
            f.name,
            kind,
            f.reference_rows,
            f.current_rows,
            fmt(f.ks),
            fmt(f.wasserstein_sigma),
            fmt(f.psi),
            fmt(f.js),
            fmt(f.hellinger),
            drift
        );
    }
}

fn selector(text: Option<String>) -> anyhow::Result<Option<flotilla_api::LabelSelector>> {
    Ok(text
        .map(|s| flotilla_api::LabelSelector::parse(&s))
        .transpose()?)
}

pub async fn drift(client: &AdminClient, command: DriftCommand, json: bool) -> anyhow::Result<()> {
    match command {
        DriftCommand::Report {
            model,
            version,
            selector: labels,
            devices,
            since,
            until,
            against,
        } => {
            let slice = SliceParams {
                version,
                selector: selector(labels)?,
                devices,
                since: since.as_deref().map(DurationText::parse).transpose()?,
                until: until.as_deref().map(DurationText::parse).transpose()?,
                against: Some(Against::parse(&against).map_err(anyhow::Error::msg)?),
                ..SliceParams::default()
            };
            let report = client.drift_report(&model, &slice).await?;
            if json {
                return print_json(&report);
            }
            println!(
                "{} version {} against {}: {} devices, {} windows, {} requests",
                report.model,
                report.version,
                report.against,
                report.devices,
                report.windows,
                report.requests
            );
            print_feature_rows(&report.features);
            if !report.predictions.is_empty() {
                println!("predictions:");
                print_feature_rows(&report.predictions);
            }
            let drifted = &report.drifted_features;
            match report.dataset_drift {
                Some(true) => println!(
                    "dataset drift: YES ({} drifted: {})",
                    drifted.len(),
                    drifted.join(", ")
                ),
                Some(false) => println!(
                    "dataset drift: no ({} drifted{})",
                    drifted.len(),
                    if drifted.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", drifted.join(", "))
                    }
                ),
                None => println!("dataset drift: no verdict (fewer than the minimum rows)"),
            }
            if report.spool_dropped + report.spool_lost > 0 {
                println!(
                    "note: devices in this slice dropped {} and lost {} telemetry windows (spool full or corrupt)",
                    report.spool_dropped, report.spool_lost
                );
            }
            Ok(())
        }
        DriftCommand::Thresholds { model, set } => {
            let answer = match set {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let thresholds: ModelThresholds = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not drift thresholds", file.display()))?;
                    client.set_drift_thresholds(&model, &thresholds).await?
                }
                None => client.drift_thresholds(&model).await?,
            };
            print_json(&answer)
        }
    }
}

pub async fn health(
    client: &AdminClient,
    model: &str,
    since: Option<String>,
    labels: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let slice = SliceParams {
        since: since.as_deref().map(DurationText::parse).transpose()?,
        selector: selector(labels)?,
        ..SliceParams::default()
    };
    let report = client.health(model, &slice).await?;
    if json {
        return print_json(&report);
    }
    println!(
        "{:>7} {:>7} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9}",
        "VERSION",
        "DEVICES",
        "WINDOWS",
        "REQUESTS",
        "ERRORS",
        "ERROR RATE",
        "P50 MS",
        "P90 MS",
        "P99 MS"
    );
    for (version, h) in &report.versions {
        println!(
            "{:>7} {:>7} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9}",
            version,
            h.devices,
            h.windows,
            h.requests,
            h.errors,
            h.error_rate
                .map_or("-".into(), |r| format!("{:.3}%", r * 100.0)),
            fmt(h.latency_ms_p50),
            fmt(h.latency_ms_p90),
            fmt(h.latency_ms_p99)
        );
    }
    Ok(())
}

pub async fn events(client: &AdminClient, model: Option<String>, json: bool) -> anyhow::Result<()> {
    let answer = client
        .events(&EventQuery {
            model,
            ..EventQuery::default()
        })
        .await?;
    if json {
        return print_json(&answer);
    }
    println!(
        "{:>6} {:<20} {:<14} {:<20} {:>7}  DETAIL",
        "ID", "AT (UTC)", "KIND", "MODEL", "VERSION"
    );
    for e in &answer.events {
        let summary = match e.drifted_features() {
            Some(features) => format!("drifted: {}", features.join(", ")),
            None => e.detail.to_string(),
        };
        println!(
            "{:>6} {:<20} {:<14} {:<20} {:>7}  {}",
            e.id,
            utc(e.at),
            e.kind,
            e.model,
            optional(e.version),
            summary
        );
    }
    Ok(())
}

pub async fn capture(client: &AdminClient, command: CaptureCommand) -> anyhow::Result<()> {
    let CaptureCommand::Export {
        model,
        version,
        out,
        format,
    } = command;
    let format = match format.as_deref() {
        Some("csv") => CaptureFormat::Csv,
        Some("ndjson") => CaptureFormat::Ndjson,
        Some(other) => anyhow::bail!("--format {other:?} is not ndjson or csv"),
        None => match out.extension().and_then(|e| e.to_str()) {
            Some("csv") => CaptureFormat::Csv,
            _ => CaptureFormat::Ndjson,
        },
    };
    let file =
        std::fs::File::create(&out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut counted = LineCounter {
        out: std::io::BufWriter::new(file),
        lines: 0,
    };
    client
        .export_captures(&model, &version, format, &mut counted)
        .await?;
    std::io::Write::flush(&mut counted.out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let lines = counted.lines;
    println!(
        "wrote {} ({} lines, {})",
        out.display(),
        lines,
        format.name()
    );
    Ok(())
}

/// Writes through to `out`, counting lines on the way.
struct LineCounter<W: std::io::Write> {
    out: W,
    lines: usize,
}

impl<W: std::io::Write> std::io::Write for LineCounter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(bytes)?;
        self.lines += bytes[..written].iter().filter(|b| **b == b'\n').count();
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
