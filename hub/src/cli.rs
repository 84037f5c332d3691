//! The `flotilla` operator CLI: argument parsing and output; every action is an admin API call.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hyper::Method;

use crate::cli_telemetry::{
    CaptureCommand, DriftCommand, capture, drift, events, health, print_profile,
    reference_from_file, upload_reference,
};
use crate::client::AdminClient;
use crate::data_dir::parse_labels;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla operator CLI: drives a hub through its admin API"
)]
pub struct Cli {
    /// The hub's admin API.
    #[arg(
        long,
        env = "FLOTILLA_HUB",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub hub: String,
    /// Admin token (operator for changes, read for the rest).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the hub's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Models and versions in the registry.
    #[command(subcommand)]
    Model(ModelCommand),
    /// One-time enrollment tokens for devices.
    #[command(subcommand, name = "enroll-token")]
    EnrollToken(EnrollTokenCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Rollouts in waves with health gates and automatic rollback.
    #[command(subcommand)]
    Rollout(crate::cli_rollout::RolloutCommand),
    /// Retraining triggers: rules per model, manual firing, run history.
    #[command(subcommand)]
    Trigger(crate::cli_trigger::TriggerCommand),
    /// Set MODEL at VERSION (a number or alias) as desired on the devices matching --to.
    Deploy {
        model: String,
        version: String,
        /// Label selector, k=v[,k=v]; empty for every device.
        #[arg(long, default_value = "")]
        to: String,
    },
    /// Profile a CSV (with a header) or .npy file locally, as a reference would be built.
    Profile {
        file: PathBuf,
        /// Numeric columns to count by value instead, comma-separated.
        #[arg(long, value_delimiter = ',')]
        categorical: Vec<String>,
    },
    /// Fleet drift reports and thresholds.
    #[command(subcommand)]
    Drift(DriftCommand),
    /// Requests, error rate and latency quantiles per version of MODEL.
    Health {
        model: String,
        /// Windows that ended within this long ago: 90s, 15m, 1h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Devices whose labels match, k=v[,k=v].
        #[arg(long)]
        selector: Option<String>,
    },
    /// The event log: drift alerts and clears.
    Events {
        #[arg(long)]
        model: Option<String>,
    },
    /// Captured input and output samples.
    #[command(subcommand)]
    Capture(CaptureCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Rotate the signing key (the root key must be on the hub; otherwise use
    /// flotilla-hub root rotate on the hub machine).
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices: online, last seen, serving versions, last install outcome.
    List,
    /// One device, with its desired state.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Push an ONNX file as the next version (idempotent: the same file twice is one version).
    Push {
        name: String,
        file: PathBuf,
        /// Training or evaluation metric, NAME=NUMBER; repeatable.
        #[arg(long = "metric", value_name = "NAME=NUMBER")]
        metrics: Vec<String>,
        /// Tag, NAME=VALUE; repeatable.
        #[arg(long = "tag", value_name = "NAME=VALUE")]
        tags: Vec<String>,
        /// Dataset the model was trained on.
        #[arg(long)]
        dataset: Option<String>,
        /// Code commit that produced the model.
        #[arg(long)]
        commit: Option<String>,
        /// Version this one was derived from.
        #[arg(long)]
        parent: Option<u64>,
        /// Training data (CSV with a header, or .npy): becomes the version's reference profile
        /// and its column names the feature names.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Features counted by value instead of sketched as numbers, comma-separated.
        #[arg(long, value_delimiter = ',')]
        categorical: Vec<String>,
        /// The input whose columns are the features (default: the first 2-D numeric input).
        #[arg(long)]
        feature_input: Option<String>,
        /// The outputs that are predictions, comma-separated (default: every output).
        #[arg(long, value_delimiter = ',')]
        predictions: Vec<String>,
    },
    /// List models.
    List,
    /// Show a model's versions, or one version (number or alias).
    Show {
        name: String,
        version: Option<String>,
    },
    /// Move or remove aliases such as production and staging.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Retire a version: kept on record, no longer deployable.
    Retire { name: String, version: u64 },
    /// The promotion quality gate new versions must pass against production.
    #[command(subcommand, name = "quality-gate")]
    QualityGate(QualityGateCommand),
}

#[derive(Debug, Subcommand)]
pub enum QualityGateCommand {
    /// Set the gate: rules like "auc >= production.auc + 0.005"; a failing version is
    /// retired, a passing one may start a rollout (--auto-rollout SPEC.toml).
    Set {
        name: String,
        #[arg(long = "rule", required = true)]
        rules: Vec<String>,
        /// The alias candidates are compared with.
        #[arg(long, default_value = "production")]
        baseline: String,
        /// A rollout spec file (TOML, without model and version) started for passing versions.
        #[arg(long)]
        auto_rollout: Option<PathBuf>,
    },
    /// Show the gate.
    Show { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point ALIAS at VERSION (a number or another alias).
    Set {
        name: String,
        alias: String,
        version: String,
    },
    /// Remove ALIAS.
    Rm { name: String, alias: String },
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokenCommand {
    /// Create a token a device uses once to enroll.
    Create {
        /// Labels the enrolled device gets, k=v,k=v.
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token is valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
}

/// "12s ago", "3m ago", "never" for a Unix time.
fn seen_ago(at: Option<i64>) -> String {
    let Some(at) = at else { return "never".into() };
    let now = flotilla_common::clock::Clock::now_unix(&flotilla_common::clock::SystemClock);
    match (now - at).max(0) {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

/// Parses 90s, 30m, 24h, 7d.
pub fn parse_duration_seconds(text: &str) -> anyhow::Result<i64> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: i64 = number
        .parse()
        .with_context(|| format!("duration {text:?} does not start with a number"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => anyhow::bail!("duration unit {other:?} is not s, m, h or d"),
    };
    Ok(number * factor)
}

fn key_value(flag: &str, text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => anyhow::bail!("--{flag} {text:?} is not NAME=VALUE"),
    }
}

/// Percent-encodes a path segment or query value.
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time.
pub fn utc(at: i64) -> String {
    let (days, seconds) = (at.div_euclid(86_400), at.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Profile { file, categorical } = &cli.command {
        return print_profile(file, categorical, cli.json);
    }
    let client = AdminClient::new(&cli.hub, cli.token.clone())?;
    let output = match cli.command {
        Command::Profile { .. } => unreachable!("handled above: needs no hub"),
        Command::Drift(command) => return drift(&client, command, cli.json).await,
        Command::Health {
            model,
            since,
            selector,
        } => return health(&client, &model, since, selector, cli.json).await,
        Command::Events { model } => return events(&client, model, cli.json).await,
        Command::Capture(command) => return capture(&client, command).await,
        Command::Rollout(command) => {
            return crate::cli_rollout::rollout(&client, command, cli.json).await;
        }
        Command::Trigger(command) => {
            return crate::cli_trigger::trigger(&client, command, cli.json).await;
        }
        Command::Model(ModelCommand::Push {
            name,
            file,
            metrics,
            tags,
            dataset,
            commit,
            parent,
            reference,
            categorical,
            feature_input,
            predictions,
        }) => {
            let mut query = Vec::new();
            let reference = match &reference {
                Some(file) => Some(reference_from_file(file, &categorical)?),
                None => None,
            };
            if let Some((names, _)) = &reference {
                let names: Vec<String> = names.iter().map(|n| query_escape(n)).collect();
                query.push(format!("features={}", names.join("%2C")));
            }
            for (key, list) in [("categorical", &categorical), ("predictions", &predictions)] {
                if !list.is_empty() {
                    let names: Vec<String> = list.iter().map(|n| query_escape(n)).collect();
                    query.push(format!("{key}={}", names.join("%2C")));
                }
            }
            if let Some(input) = &feature_input {
                query.push(format!("feature_input={}", query_escape(input)));
            }
            for metric in &metrics {
                let (k, v) = key_value("metric", metric)?;
                v.parse::<f64>()
                    .with_context(|| format!("--metric {metric:?}: {v:?} is not a number"))?;
                query.push(format!("metric.{}={}", query_escape(&k), query_escape(&v)));
            }
            for tag in &tags {
                let (k, v) = key_value("tag", tag)?;
                query.push(format!("tag.{}={}", query_escape(&k), query_escape(&v)));
            }
            for (key, value) in [
                ("dataset", dataset),
                ("commit", commit),
                ("parent", parent.map(|p| p.to_string())),
            ] {
                if let Some(value) = value {
                    query.push(format!("lineage.{key}={}", query_escape(&value)));
                }
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let path = format!(
                "/api/v1/models/{}/versions?{}",
                query_escape(&name),
                query.join("&")
            );
            // A progress bar on stderr (hidden when it is not a terminal, so scripts see none).
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(bytes.len() as u64),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "uploading {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            let progress = bar.clone();
            let answer = client
                .upload_with_progress(&path, Bytes::from(bytes), move |sent| {
                    progress.set_position(sent)
                })
                .await;
            bar.finish_and_clear();
            let mut answer = answer?;
            if let Some((_, encoded)) = reference {
                let version = answer["version"]
                    .as_u64()
                    .context("the hub's push answer has no version")?;
                answer["reference"] = upload_reference(&client, &name, version, encoded).await?;
            }
            if !cli.json {
                let verb = if answer["created"].as_bool() == Some(true) {
                    "pushed"
                } else {
                    "already registered:"
                };
                println!(
                    "{verb} {} version {} (sha256 {})",
                    answer["model"].as_str().unwrap_or(&name),
                    answer["version"],
                    answer["sha256"].as_str().unwrap_or("")
                );
                if let Some(features) = answer["reference"]["features"].as_array() {
                    println!("reference profile stored: {} features", features.len());
                }
                print_quality_gate(&answer["quality_gate"]);
                return Ok(());
            }
            answer
        }
        Command::Model(ModelCommand::List) => {
            let answer = client.json(Method::GET, "/api/v1/models", None).await?;
            if !cli.json {
                println!("{:<24} {:>8} {:>7}  ALIASES", "MODEL", "VERSIONS", "LATEST");
                for model in answer.as_array().into_iter().flatten() {
                    let aliases: Vec<String> = model["aliases"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(a, v)| format!("{a}={v}"))
                        .collect();
                    println!(
                        "{:<24} {:>8} {:>7}  {}",
                        model["name"].as_str().unwrap_or(""),
                        model["versions"].to_string(),
                        model["latest_version"].to_string(),
                        aliases.join(" ")
                    );
                }
                return Ok(());
            }
            answer
        }
        Command::Model(ModelCommand::Show {
            name,
            version: Some(version),
        }) => {
            client
                .json(
                    Method::GET,
                    &format!(
                        "/api/v1/models/{}/versions/{}",
                        query_escape(&name),
                        query_escape(&version)
                    ),
                    None,
                )
                .await?
        }
        Command::Model(ModelCommand::Show {
            name,
            version: None,
        }) => {
            let answer = client
                .json(
                    Method::GET,
                    &format!("/api/v1/models/{}", query_escape(&name)),
                    None,
                )
                .await?;
            if !cli.json {
                println!(
                    "{:>7}  {:<12}  {:>10}  {:<9}  {:<20}  METRICS",
                    "VERSION", "SHA256", "BYTES", "STATE", "ALIASES"
                );
                for v in answer["versions"].as_array().into_iter().flatten() {
                    let sha = v["artifact_sha256"].as_str().unwrap_or("");
                    let state = if v["retired"].is_null() {
                        "active"
                    } else {
                        "retired"
                    };
                    let aliases: Vec<&str> = v["aliases"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str())
                        .collect();
                    let metrics: Vec<String> = v["metrics"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, m)| format!("{k}={m}"))
                        .collect();
                    println!(
                        "{:>7}  {:<12}  {:>10}  {:<9}  {:<20}  {}",
                        v["version"].to_string(),
                        &sha[..sha.len().min(12)],
                        v["artifact_size"].to_string(),
                        state,
                        aliases.join(","),
                        metrics.join(" ")
                    );
                }
                return Ok(());
            }
            answer
        }
        Command::Model(ModelCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
        })) => {
            let target = version
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::from(version.clone()));
            let path = format!(
                "/api/v1/models/{}/aliases/{}",
                query_escape(&name),
                query_escape(&alias)
            );
            let answer = client
                .json(
                    Method::PUT,
                    &path,
                    Some(serde_json::json!({"version": target})),
                )
                .await?;
            if !cli.json {
                println!("{name}: {alias} -> version {}", answer["version"]);
                return Ok(());
            }
            answer
        }
        Command::Model(ModelCommand::Alias(AliasCommand::Rm { name, alias })) => {
            client
                .json(
                    Method::DELETE,
                    &format!(
                        "/api/v1/models/{}/aliases/{}",
                        query_escape(&name),
                        query_escape(&alias)
                    ),
                    None,
                )
                .await?;
            println!("{name}: alias {alias} removed");
            return Ok(());
        }
        Command::Model(ModelCommand::QualityGate(QualityGateCommand::Set {
            name,
            rules,
            baseline,
            auto_rollout,
        })) => {
            let auto_rollout = match auto_rollout {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let table: toml::Table = toml::from_str(&text)
                        .with_context(|| format!("{} is not TOML", path.display()))?;
                    Some(serde_json::to_value(table)?)
                }
                None => None,
            };
            client
                .json(
                    Method::PUT,
                    &format!("/api/v1/models/{}/quality-gate", query_escape(&name)),
                    Some(serde_json::json!({"rules": rules, "baseline_alias": baseline, "auto_rollout": auto_rollout})),
                )
                .await?
        }
        Command::Model(ModelCommand::QualityGate(QualityGateCommand::Show { name })) => {
            client
                .json(
                    Method::GET,
                    &format!("/api/v1/models/{}/quality-gate", query_escape(&name)),
                    None,
                )
                .await?
        }
        Command::Model(ModelCommand::Retire { name, version }) => {
            let answer = client
                .json(
                    Method::POST,
                    &format!(
                        "/api/v1/models/{}/versions/{version}/retire",
                        query_escape(&name)
                    ),
                    None,
                )
                .await?;
            if !cli.json {
                println!("{name} version {version} retired");
                return Ok(());
            }
            answer
        }
        Command::Keys(KeysCommand::Rotate) => {
            let answer = client
                .json(Method::POST, "/api/v1/keys/rotate", None)
                .await?;
            if !cli.json {
                println!(
                    "signing key rotated: root metadata version {}; {} devices' desired state re-signed",
                    answer["root_version"], answer["devices_updated"]
                );
                return Ok(());
            }
            answer
        }
        Command::Deploy { model, version, to } => {
            let body = serde_json::json!({"model": model, "version": version, "selector": to});
            let answer = client
                .json(Method::POST, "/api/v1/deployments", Some(body))
                .await?;
            if !cli.json {
                let count = answer["devices"].as_array().map(Vec::len).unwrap_or(0);
                println!(
                    "{model} version {} set as desired on {count} device(s)",
                    answer["version"]
                );
                return Ok(());
            }
            answer
        }
        Command::Device(DeviceCommand::List) => {
            let answer = client.json(Method::GET, "/api/v1/devices", None).await?;
            if !cli.json {
                println!(
                    "{:<22} {:<8} {:>11}  {:<24} {:<28} LAST OUTCOME",
                    "DEVICE", "STATE", "LAST SEEN", "LABELS", "SERVING"
                );
                for device in answer.as_array().into_iter().flatten() {
                    let labels: Vec<String> = device["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect();
                    let serving: Vec<String> = device["serving"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}@{v}"))
                        .collect();
                    let outcome = device["last_outcomes"]
                        .as_array()
                        .and_then(|o| o.last())
                        .map(|o| {
                            let mut text = format!(
                                "{}@{} {}",
                                o["model"].as_str().unwrap_or(""),
                                o["version"],
                                o["state"].as_str().unwrap_or("")
                            );
                            if let Some(reason) = o["reason"].as_str() {
                                text.push_str(&format!(": {reason}"));
                            }
                            text
                        });
                    println!(
                        "{:<22} {:<8} {:>11}  {:<24} {:<28} {}",
                        device["id"].as_str().unwrap_or(""),
                        if device["online"].as_bool() == Some(true) {
                            "online"
                        } else {
                            "offline"
                        },
                        seen_ago(device["last_seen"].as_i64()),
                        labels.join(","),
                        serving.join(","),
                        outcome.unwrap_or_default()
                    );
                }
                return Ok(());
            }
            answer
        }
        Command::Device(DeviceCommand::Show { id }) => {
            client
                .json(
                    Method::GET,
                    &format!("/api/v1/devices/{}", query_escape(&id)),
                    None,
                )
                .await?
        }
        Command::EnrollToken(EnrollTokenCommand::Create { labels, ttl }) => {
            let labels = parse_labels(&labels).map_err(anyhow::Error::msg)?;
            let ttl_seconds = parse_duration_seconds(&ttl)?;
            let answer = client
                .json(
                    Method::POST,
                    "/api/v1/enrollment-tokens",
                    Some(serde_json::json!({"labels": labels, "ttl_seconds": ttl_seconds})),
                )
                .await?;
            if !cli.json {
                println!("{}", answer["token"].as_str().unwrap_or(""));
                return Ok(());
            }
            answer
        }
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// The quality gate's verdict on a pushed version, rule by rule.
fn print_quality_gate(gate: &serde_json::Value) {
    if gate.is_null() {
        return;
    }
    let passed = gate["passed"].as_bool() == Some(true);
    println!(
        "quality gate: {} (against version {})",
        if passed {
            "passed"
        } else {
            "REJECTED: the version is retired"
        },
        gate["baseline_version"]
    );
    for outcome in gate["outcomes"].as_array().into_iter().flatten() {
        println!(
            "  {} {}: candidate {}, threshold {}{}",
            if outcome["passed"] == true {
                "ok  "
            } else {
                "FAIL"
            },
            outcome["rule"].as_str().unwrap_or(""),
            outcome["candidate"],
            outcome["threshold"],
            outcome["note"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    if let Some(rollout) = gate["rollout"].as_str() {
        println!("canary rollout started: {rollout} (flotilla rollout status {rollout} --watch)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_seconds("24h").unwrap(), 86400);
        assert_eq!(parse_duration_seconds("90").unwrap(), 90);
        assert_eq!(parse_duration_seconds("7d").unwrap(), 7 * 86400);
        assert!(parse_duration_seconds("h").is_err());
        assert!(parse_duration_seconds("5y").is_err());
    }
}
