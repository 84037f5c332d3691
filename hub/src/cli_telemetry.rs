//! The telemetry half of the `flotilla` CLI: reference profiles, `profile`, `drift report`,
//! `health`, `events` and `capture export`. Tables for people, `--json` for scripts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use flotilla_common::sketch::{Profile, REFERENCE_K};
use flotilla_common::telemetry::{NamedProfile, encode_reference, profile_table, read_table};
use hyper::Method;

use crate::cli::query_escape as escape;
use crate::client::AdminClient;

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

/// Builds a reference profile set from a CSV or `.npy` file: the column names and the
/// encoded profiles (KLL k=1024).
pub fn reference_from_file(
    file: &Path,
    categorical: &[String],
) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
    let table = read_table(file)?;
    if table.rows == 0 {
        anyhow::bail!("{} has no rows", file.display());
    }
    let profiles = profile_table(&table, categorical, REFERENCE_K);
    Ok((
        table.names.clone(),
        encode_reference(table.rows as u64, &profiles),
    ))
}

fn fmt(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && (v.abs() >= 1e5 || (v != 0.0 && v.abs() < 1e-3)) => {
            format!("{v:.3e}")
        }
        Some(v) if v.is_finite() => format!("{v:.4}"),
        Some(v) => v.to_string(),
        None => "-".into(),
    }
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

fn print_feature_rows(rows: &[serde_json::Value]) {
    println!(
        "{:<28} {:<11} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  DRIFT",
        "FEATURE", "KIND", "REF ROWS", "ROWS", "KS", "W/SIGMA", "PSI", "JS", "HELL"
    );
    for f in rows {
        let drift = match f["drifted"].as_bool() {
            Some(true) => "DRIFT".to_owned(),
            Some(false) => "ok".to_owned(),
            None => format!("- ({})", f["note"].as_str().unwrap_or("no verdict")),
        };
        println!(
            "{:<28} {:<11} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
            f["name"].as_str().unwrap_or(""),
            f["kind"].as_str().unwrap_or(""),
            f["reference_rows"].to_string(),
            f["current_rows"].to_string(),
            fmt(f["ks"].as_f64()),
            fmt(f["wasserstein_sigma"].as_f64()),
            fmt(f["psi"].as_f64()),
            fmt(f["js"].as_f64()),
            fmt(f["hellinger"].as_f64()),
            drift
        );
    }
}

pub async fn drift(client: &AdminClient, command: DriftCommand, json: bool) -> anyhow::Result<()> {
    match command {
        DriftCommand::Report {
            model,
            version,
            selector,
            devices,
            since,
            until,
            against,
        } => {
            let mut query = vec![format!("against={}", escape(&against))];
            for (key, value) in [
                ("version", version),
                ("selector", selector),
                ("devices", devices),
                ("since", since),
                ("until", until),
            ] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", escape(&value)));
                }
            }
            let report = client
                .json(
                    Method::GET,
                    &format!(
                        "/api/v1/models/{}/drift?{}",
                        escape(&model),
                        query.join("&")
                    ),
                    None,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!(
                "{} version {} against {}: {} devices, {} windows, {} requests",
                report["model"].as_str().unwrap_or(&model),
                report["version"],
                report["against"].as_str().unwrap_or(""),
                report["devices"],
                report["windows"],
                report["requests"]
            );
            print_feature_rows(
                report["features"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            );
            if let Some(predictions) = report["predictions"].as_array().filter(|p| !p.is_empty()) {
                println!("predictions:");
                print_feature_rows(predictions);
            }
            let drifted: Vec<&str> = report["drifted_features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            match report["dataset_drift"].as_bool() {
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
            if report["spool_dropped"].as_u64().unwrap_or(0)
                + report["spool_lost"].as_u64().unwrap_or(0)
                > 0
            {
                println!(
                    "note: devices in this slice dropped {} and lost {} telemetry windows (spool full or corrupt)",
                    report["spool_dropped"], report["spool_lost"]
                );
            }
        }
        DriftCommand::Thresholds { model, set } => {
            let path = format!("/api/v1/models/{}/drift-thresholds", escape(&model));
            let answer = match set {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", file.display()))?;
                    client.json(Method::PUT, &path, Some(value)).await?
                }
                None => client.json(Method::GET, &path, None).await?,
            };
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
    }
    Ok(())
}

pub async fn health(
    client: &AdminClient,
    model: &str,
    since: Option<String>,
    selector: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (key, value) in [("since", since), ("selector", selector)] {
        if let Some(value) = value {
            query.push(format!("{key}={}", escape(&value)));
        }
    }
    let answer = client
        .json(
            Method::GET,
            &format!(
                "/api/v1/models/{}/health?{}",
                escape(model),
                query.join("&")
            ),
            None,
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
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
    for (version, h) in answer["versions"].as_object().into_iter().flatten() {
        println!(
            "{:>7} {:>7} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9}",
            version,
            h["devices"].to_string(),
            h["windows"].to_string(),
            h["requests"].to_string(),
            h["errors"].to_string(),
            h["error_rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.3}%", r * 100.0)),
            fmt(h["latency_ms_p50"].as_f64()),
            fmt(h["latency_ms_p90"].as_f64()),
            fmt(h["latency_ms_p99"].as_f64())
        );
    }
    Ok(())
}

pub async fn events(client: &AdminClient, model: Option<String>, json: bool) -> anyhow::Result<()> {
    let path = match &model {
        Some(m) => format!("/api/v1/events?model={}", escape(m)),
        None => "/api/v1/events".to_owned(),
    };
    let answer = client.json(Method::GET, &path, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!(
        "{:>6} {:<20} {:<14} {:<20} {:>7}  DETAIL",
        "ID", "AT (UTC)", "KIND", "MODEL", "VERSION"
    );
    for e in answer["events"].as_array().into_iter().flatten() {
        let detail = &e["detail"];
        let summary = match detail["drifted_features"].as_array() {
            Some(features) => format!(
                "drifted: {}",
                features
                    .iter()
                    .filter_map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => detail.to_string(),
        };
        println!(
            "{:>6} {:<20} {:<14} {:<20} {:>7}  {}",
            e["id"].to_string(),
            crate::cli::utc(e["at"].as_i64().unwrap_or(0)),
            e["kind"].as_str().unwrap_or(""),
            e["model"].as_str().unwrap_or(""),
            e["version"].to_string(),
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
    let format = format.unwrap_or_else(|| match out.extension().and_then(|e| e.to_str()) {
        Some("csv") => "csv".into(),
        _ => "ndjson".into(),
    });
    let body = client
        .get_raw(&format!(
            "/api/v1/models/{}/versions/{}/captures?format={}",
            escape(&model),
            escape(&version),
            escape(&format)
        ))
        .await?;
    std::fs::write(&out, &body).with_context(|| format!("cannot write {}", out.display()))?;
    let lines = body.iter().filter(|b| **b == b'\n').count();
    println!("wrote {} ({} lines, {format})", out.display(), lines);
    Ok(())
}

/// Uploads a reference profile set for a pushed version.
pub async fn upload_reference(
    client: &AdminClient,
    model: &str,
    version: u64,
    encoded: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .put_bytes(
            &format!(
                "/api/v1/models/{}/versions/{version}/reference",
                escape(model)
            ),
            Bytes::from(encoded),
        )
        .await?)
}
