//! The `flotilla` commands: their flags, and the model, device, key, deploy and
//! enrollment-token commands (rollouts, triggers and telemetry have their own files).
//! Tables for people, `--json` for scripts.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use flotilla_api::AdminClient;
use flotilla_api::devices::{DeployRequest, EnrollmentTokenRequest};
use flotilla_api::duration::parse_duration;
use flotilla_api::models::{PushAnswer, PushRequest, QualityGateResult, VersionOrAlias};
use flotilla_api::quality::{QualityPolicy, Rule};
use flotilla_api::rollouts::RolloutSpec;
use flotilla_api::selector::parse_labels;
use flotilla_api::telemetry::ReferenceStored;
use flotilla_common::clock::{Clock, SystemClock};
use serde::Serialize;

use crate::format::{optional, seen_ago};
use crate::telemetry::{
    CaptureCommand, DriftCommand, capture, drift, events, health, print_profile,
};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla operator CLI: drives a hub through its admin API"
)]
pub struct Cli {
    /// The hub's admin API [default: the one `flotilla login` saved, else
    /// https://127.0.0.1:7070].
    #[arg(long, env = "FLOTILLA_HUB", global = true)]
    pub hub: Option<String>,
    /// The hub's CA certificate (PEM) for an https:// hub: keys/ca.crt in the hub's data
    /// folder. Without it, the CA `flotilla login` saved, else the machine's root
    /// certificates.
    #[arg(long, env = "FLOTILLA_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
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
    /// Check and remember a hub, its CA (--ca-file) and a token (--token), so later
    /// commands need none of them (saved with mode 0600 under ~/.config/flotilla).
    Login,
    /// Forget what `login` saved.
    Logout,
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
    Rollout(crate::rollout::RolloutCommand),
    /// Retraining triggers: rules per model, manual firing, run history.
    #[command(subcommand)]
    Trigger(crate::trigger::TriggerCommand),
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
    /// Decommission a device: its certificates revoked, its downloads, renewals, reports and
    /// telemetry refused; it stays listed with its history.
    Revoke { id: String },
    /// Forget a device (after revoking it, say).
    Remove { id: String },
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
    /// Create a token a device uses once to enroll (or up to --uses devices: a claim token
    /// for flashing many devices with one image).
    Create {
        /// Labels the enrolled device gets, k=v,k=v.
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token is valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Every token: id, labels, uses, expiry, revoked (never the secret).
    List,
    /// Revoke a token by its id: no device enrolls with it any more.
    Revoke { id: String },
}

fn key_value(flag: &str, text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => anyhow::bail!("--{flag} {text:?} is not NAME=VALUE"),
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// What `model push --json` prints: the hub's answer and the reference stored with it.
#[derive(Debug, Serialize)]
struct PushOutput {
    #[serde(flatten)]
    push: PushAnswer,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<ReferenceStored>,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Profile { file, categorical } = &cli.command {
        return print_profile(file, categorical, cli.json);
    }
    if let Command::Logout = &cli.command {
        match crate::login::remove()? {
            Some(path) => println!("forgot the login in {}", path.display()),
            None => println!("no login saved"),
        }
        return Ok(());
    }
    let ca = cli
        .ca_file
        .as_deref()
        .map(crate::login::read_ca)
        .transpose()?;
    let saved = match &cli.command {
        Command::Login => None,
        _ => crate::login::load()?,
    };
    let connection = crate::login::resolve(cli.hub.clone(), ca, cli.token.clone(), saved);
    let mut client = AdminClient::new(&connection.hub, connection.token.clone())?;
    if let Some((pem, what)) = &connection.ca {
        let trust = flotilla_api::tls::ServerTrust::ca_pem(pem, what)?;
        client = client.with_trust(&trust)?;
    }
    let json = cli.json;
    match cli.command {
        Command::Login | Command::Logout => {
            // Checked with the same calls a command makes: the hub answers, over TLS it
            // trusts, and takes the token.
            client.models().await.with_context(|| {
                format!("cannot log in to {}; nothing was saved", connection.hub)
            })?;
            let path = crate::login::save(&crate::login::Login {
                hub: connection.hub.clone(),
                ca_certificate: connection.ca.map(|(pem, _)| pem),
                token: connection.token,
            })?;
            println!(
                "logged in to {}; saved in {}",
                connection.hub,
                path.display()
            );
            Ok(())
        }
        Command::Profile { .. } => unreachable!("handled above: needs no hub"),
        Command::Drift(command) => drift(&client, command, json).await,
        Command::Health {
            model,
            since,
            selector,
        } => health(&client, &model, since, selector, json).await,
        Command::Events { model } => events(&client, model, json).await,
        Command::Capture(command) => capture(&client, command).await,
        Command::Rollout(command) => crate::rollout::rollout(&client, command, json).await,
        Command::Trigger(command) => crate::trigger::trigger(&client, command, json).await,
        Command::Model(command) => model(&client, command, json).await,
        Command::Keys(KeysCommand::Rotate) => {
            let answer = client.rotate_signing_key().await?;
            if json {
                return print_json(&answer);
            }
            println!(
                "signing key rotated: root metadata version {}; {} devices' desired state re-signed",
                answer.root_version, answer.devices_updated
            );
            Ok(())
        }
        Command::Deploy { model, version, to } => {
            let request = DeployRequest {
                model: model.clone(),
                version,
                selector: flotilla_api::LabelSelector::parse(&to)?,
            };
            let answer = client.deploy(&request).await?;
            if json {
                return print_json(&answer);
            }
            println!(
                "{model} version {} set as desired on {} device(s)",
                answer.version,
                answer.devices.len()
            );
            Ok(())
        }
        Command::Device(DeviceCommand::List) => {
            let devices = client.devices().await?;
            if json {
                return print_json(&devices);
            }
            let now = SystemClock.now_unix();
            println!(
                "{:<22} {:<8} {:>11}  {:<24} {:<28} LAST OUTCOME",
                "DEVICE", "STATE", "LAST SEEN", "LABELS", "SERVING"
            );
            for device in devices {
                let labels: Vec<String> = device
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let serving: Vec<String> = device
                    .serving
                    .iter()
                    .map(|(k, v)| format!("{k}@{v}"))
                    .collect();
                let outcome = device.last_outcomes.last().map(|o| {
                    let mut text = format!("{}@{} {}", o.model, o.version, o.state.as_str());
                    if let Some(reason) = &o.reason {
                        text.push_str(&format!(": {reason}"));
                    }
                    text
                });
                println!(
                    "{:<22} {:<8} {:>11}  {:<24} {:<28} {}",
                    device.id,
                    match (device.revoked_at, device.online) {
                        (Some(_), _) => "revoked",
                        (None, true) => "online",
                        (None, false) => "offline",
                    },
                    seen_ago(device.last_seen, now),
                    labels.join(","),
                    serving.join(","),
                    outcome.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Device(DeviceCommand::Show { id }) => print_json(&client.device(&id).await?),
        Command::Device(DeviceCommand::Revoke { id }) => {
            let device = client.revoke_device(&id).await?;
            if json {
                return print_json(&device);
            }
            println!("device {} revoked", device.id);
            Ok(())
        }
        Command::Device(DeviceCommand::Remove { id }) => {
            client.remove_device(&id).await?;
            println!("device {id} removed");
            Ok(())
        }
        Command::EnrollToken(EnrollTokenCommand::List) => {
            let tokens = client.enrollment_tokens().await?;
            if json {
                return print_json(&tokens);
            }
            println!(
                "{:<14} {:>9} {:<20} {:<8} labels",
                "id", "uses", "expires", "state"
            );
            for t in tokens {
                let state = match t.revoked_at {
                    Some(_) => "revoked",
                    None if t.uses >= t.uses_allowed => "used up",
                    None => "usable",
                };
                let labels: Vec<String> =
                    t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<14} {:>9} {:<20} {:<8} {}",
                    t.id,
                    format!("{}/{}", t.uses, t.uses_allowed),
                    crate::format::utc(t.expires),
                    state,
                    labels.join(",")
                );
            }
            Ok(())
        }
        Command::EnrollToken(EnrollTokenCommand::Revoke { id }) => {
            let revoked = client.revoke_enrollment_token(&id).await?;
            if json {
                return print_json(&revoked);
            }
            println!("enrollment token {} revoked", revoked.id);
            Ok(())
        }
        Command::EnrollToken(EnrollTokenCommand::Create { labels, ttl, uses }) => {
            let request = EnrollmentTokenRequest {
                labels: parse_labels(&labels)?,
                ttl_seconds: parse_duration(&ttl)?.as_secs() as i64,
                uses,
            };
            let answer = client.create_enrollment_token(&request).await?;
            if json {
                return print_json(&answer);
            }
            println!("{}", answer.token);
            Ok(())
        }
    }
}

async fn model(client: &AdminClient, command: ModelCommand, json: bool) -> anyhow::Result<()> {
    match command {
        ModelCommand::Push {
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
        } => {
            let reference = match &reference {
                Some(file) => Some(flotilla_common::telemetry::reference_from_file(
                    file,
                    &categorical,
                )?),
                None => None,
            };
            let mut request = PushRequest {
                feature_names: reference.as_ref().map(|(names, _)| names.clone()),
                feature_input,
                prediction_outputs: (!predictions.is_empty()).then_some(predictions),
                categorical,
                ..PushRequest::default()
            };
            for metric in &metrics {
                let (k, v) = key_value("metric", metric)?;
                let number: f64 = v
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .with_context(|| format!("--metric {metric:?}: {v:?} is not a number"))?;
                request.metrics.insert(k, number);
            }
            for tag in &tags {
                let (k, v) = key_value("tag", tag)?;
                request.tags.insert(k, v);
            }
            for (key, value) in [
                ("dataset", dataset),
                ("commit", commit),
                ("parent", parent.map(|p| p.to_string())),
            ] {
                if let Some(value) = value {
                    request.lineage.insert(key.to_owned(), value);
                }
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
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
                .push_with_progress(&name, Bytes::from(bytes), &request, move |sent| {
                    progress.set_position(sent)
                })
                .await;
            bar.finish_and_clear();
            let push = answer?;
            let reference = match reference {
                Some((_, encoded)) => Some(
                    client
                        .put_reference(&name, &push.version.to_string(), Bytes::from(encoded))
                        .await?,
                ),
                None => None,
            };
            if json {
                return print_json(&PushOutput { push, reference });
            }
            let verb = if push.created {
                "pushed"
            } else {
                "already registered:"
            };
            println!(
                "{verb} {} version {} (sha256 {})",
                push.model, push.version, push.sha256
            );
            if let Some(reference) = &reference {
                println!(
                    "reference profile stored: {} features",
                    reference.features.len()
                );
            }
            if let Some(gate) = &push.quality_gate {
                print_quality_gate(gate);
            }
            Ok(())
        }
        ModelCommand::List => {
            let models = client.models().await?;
            if json {
                return print_json(&models);
            }
            println!("{:<24} {:>8} {:>7}  ALIASES", "MODEL", "VERSIONS", "LATEST");
            for model in models {
                let aliases: Vec<String> = model
                    .aliases
                    .iter()
                    .map(|(a, v)| format!("{a}={v}"))
                    .collect();
                println!(
                    "{:<24} {:>8} {:>7}  {}",
                    model.name,
                    model.versions,
                    optional(model.latest_version),
                    aliases.join(" ")
                );
            }
            Ok(())
        }
        ModelCommand::Show {
            name,
            version: Some(version),
        } => print_json(&client.version(&name, &version).await?),
        ModelCommand::Show {
            name,
            version: None,
        } => {
            let model = client.model(&name).await?;
            if json {
                return print_json(&model);
            }
            println!(
                "{:>7}  {:<12}  {:>10}  {:<9}  {:<20}  METRICS",
                "VERSION", "SHA256", "BYTES", "STATE", "ALIASES"
            );
            for v in model.versions {
                let sha = &v.artifact_sha256;
                let state = if v.retired.is_none() {
                    "active"
                } else {
                    "retired"
                };
                let metrics: Vec<String> =
                    v.metrics.iter().map(|(k, m)| format!("{k}={m}")).collect();
                println!(
                    "{:>7}  {:<12}  {:>10}  {:<9}  {:<20}  {}",
                    v.version,
                    &sha[..sha.len().min(12)],
                    v.artifact_size,
                    state,
                    v.aliases.join(","),
                    metrics.join(" ")
                );
            }
            Ok(())
        }
        ModelCommand::Alias(AliasCommand::Set {
            name,
            alias,
            version,
        }) => {
            let answer = client
                .set_alias(&name, &alias, VersionOrAlias::parse(&version))
                .await?;
            if json {
                return print_json(&answer);
            }
            println!("{name}: {alias} -> version {}", answer.version);
            Ok(())
        }
        ModelCommand::Alias(AliasCommand::Rm { name, alias }) => {
            client.remove_alias(&name, &alias).await?;
            println!("{name}: alias {alias} removed");
            Ok(())
        }
        ModelCommand::QualityGate(QualityGateCommand::Set {
            name,
            rules,
            baseline,
            auto_rollout,
        }) => {
            let auto_rollout = match auto_rollout {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let template: RolloutSpec = toml::from_str(&text)
                        .with_context(|| format!("{} is not a rollout spec", path.display()))?;
                    Some(template)
                }
                None => None,
            };
            let rules = rules
                .iter()
                .map(|r| Rule::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let policy = QualityPolicy {
                rules,
                baseline_alias: baseline,
                auto_rollout,
            };
            print_json(&client.set_quality_gate(&name, &policy).await?)
        }
        ModelCommand::QualityGate(QualityGateCommand::Show { name }) => {
            print_json(&client.quality_gate(&name).await?)
        }
        ModelCommand::Retire { name, version } => {
            let answer = client.retire(&name, version).await?;
            if json {
                return print_json(&answer);
            }
            println!("{name} version {version} retired");
            Ok(())
        }
    }
}

/// The quality gate's verdict on a pushed version, rule by rule.
fn print_quality_gate(gate: &QualityGateResult) {
    println!(
        "quality gate: {} (against version {})",
        if gate.passed {
            "passed"
        } else {
            "REJECTED: the version is retired"
        },
        optional(gate.baseline_version)
    );
    for outcome in &gate.outcomes {
        println!(
            "  {} {}: candidate {}, threshold {}{}",
            if outcome.passed { "ok  " } else { "FAIL" },
            outcome.rule,
            optional(outcome.candidate),
            optional(outcome.threshold),
            outcome
                .note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    if let Some(rollout) = &gate.rollout {
        println!("canary rollout started: {rollout} (flotilla rollout status {rollout} --watch)");
    }
}
