//! `flotilla rollout ...`: create rollouts from a spec file or flags, list them, watch one
//! wave by wave with its gate figures, and the operator's commands.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use flotilla_api::AdminClient;
use flotilla_api::duration::DurationText;
use flotilla_api::rollouts::{GateVerdict, RolloutAction, RolloutSpec, RolloutView};

use crate::commands::print_json;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout: from a spec file (TOML or JSON), or from flags.
    Create {
        /// A rollout spec file (TOML, or JSON ending in .json).
        spec: Option<PathBuf>,
        #[arg(long, required_unless_present = "spec")]
        model: Option<String>,
        /// A version number or alias.
        #[arg(long, required_unless_present = "spec")]
        version: Option<String>,
        /// Cumulative percentages, e.g. 1,10,50,100.
        #[arg(long, value_delimiter = ',')]
        waves: Option<Vec<f64>>,
        /// Target devices, k=v[,k=v]; empty for every device.
        #[arg(long)]
        selector: Option<String>,
        /// Minimum time each wave runs before its gates may pass it: 90s, 10m, 1h (a bare
        /// number is seconds).
        #[arg(long)]
        soak: Option<DurationText>,
        /// `rollback` (default) or `pause` when a wave fails.
        #[arg(long)]
        on_failure: Option<String>,
        /// Waves (from 1) that wait for `flotilla rollout approve`.
        #[arg(long, value_delimiter = ',')]
        approve_before: Option<Vec<usize>>,
    },
    /// Every rollout, newest first.
    List,
    /// One rollout: waves, installs, gates; `--watch` redraws until it finishes.
    Status {
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// Stop at the current wave (devices keep what they have).
    Pause { id: String },
    /// Carry on from a pause; the wave soaks again.
    Resume { id: String },
    /// Let the wave that waits for approval start.
    Approve { id: String },
    /// End the rollout: no further waves, devices keep what they have.
    Abort { id: String },
    /// Give every device of the rollout its previous version back.
    Rollback { id: String },
    /// Skip the remaining waves and gates: every target gets the version, the alias moves.
    Promote { id: String },
}

/// The spec from the file (if any) with the flags laid over it, checked.
fn spec_from(command: &RolloutCommand) -> anyhow::Result<RolloutSpec> {
    let RolloutCommand::Create {
        spec,
        model,
        version,
        waves,
        selector,
        soak,
        on_failure,
        approve_before,
    } = command
    else {
        unreachable!("only create has a spec")
    };
    let mut spec = match spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let parsed: Result<RolloutSpec, String> =
                if path.extension().is_some_and(|e| e == "json") {
                    serde_json::from_str(&text).map_err(|e| e.to_string())
                } else {
                    toml::from_str(&text).map_err(|e| e.to_string())
                };
            parsed.map_err(|e| {
                anyhow::anyhow!("{}: the rollout spec does not parse: {e}", path.display())
            })?
        }
        None => serde_json::from_str("{}").expect("every field of a spec has a default"),
    };
    if let Some(m) = model {
        spec.model = m.clone();
    }
    if let Some(v) = version {
        spec.version = v.clone();
    }
    if let Some(w) = waves {
        spec.waves = w.clone();
    }
    if let Some(s) = selector {
        spec.selector = flotilla_api::LabelSelector::parse(s)?;
    }
    if let Some(s) = soak {
        spec.soak_seconds = s.0.as_secs();
    }
    if let Some(f) = on_failure {
        spec.on_failure = serde_json::from_value(serde_json::Value::String(f.clone()))
            .map_err(|_| anyhow::anyhow!("--on-failure {f:?} is not rollback or pause"))?;
    }
    if let Some(a) = approve_before {
        spec.approve_before = a.clone();
    }
    spec.check()?;
    Ok(spec)
}

pub async fn rollout(
    client: &AdminClient,
    command: RolloutCommand,
    json: bool,
) -> anyhow::Result<()> {
    let action = |action: RolloutAction, id: &String| (action, id.clone());
    let (action, id) = match &command {
        RolloutCommand::Create { .. } => {
            let view = client.create_rollout(&spec_from(&command)?).await?;
            return show(&view, json);
        }
        RolloutCommand::List => {
            let list = client.rollouts().await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<28} {:<22} {:>7} {:>9}  REASON",
                "ID", "PHASE", "WAVE", "INSTALLED"
            );
            for r in list {
                println!(
                    "{:<28} {:<22} {:>7} {:>9}  {}",
                    r.id,
                    r.phase.name(),
                    format!("{}/{}", r.wave, r.waves.len()),
                    format!("{}/{}", r.installed, r.targets),
                    r.reason.as_deref().unwrap_or("")
                );
            }
            return Ok(());
        }
        RolloutCommand::Status { id, watch } => loop {
            let view = client.rollout(id).await?;
            if json {
                print_json(&view)?;
            } else {
                if *watch {
                    // Clear the screen and redraw in place.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render_status(&view));
            }
            if !*watch || !view.phase.is_active() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        },
        RolloutCommand::Pause { id } => action(RolloutAction::Pause, id),
        RolloutCommand::Resume { id } => action(RolloutAction::Resume, id),
        RolloutCommand::Approve { id } => action(RolloutAction::Approve, id),
        RolloutCommand::Abort { id } => action(RolloutAction::Abort, id),
        RolloutCommand::Rollback { id } => action(RolloutAction::Rollback, id),
        RolloutCommand::Promote { id } => action(RolloutAction::Promote, id),
    };
    let view = client.rollout_command(&id, action).await?;
    show(&view, json)
}

fn show(view: &RolloutView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(view);
    }
    print!("{}", render_status(view));
    Ok(())
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// A rollout as text: one progress bar per wave, the reason, the last gate verdicts.
pub fn render_status(view: &RolloutView) -> String {
    let mut out = format!(
        "rollout {}: {} version {} to {} devices: {}\n",
        view.id, view.model, view.version, view.targets, view.phase,
    );
    for (i, size) in view.wave_sizes.iter().enumerate() {
        let number = i + 1;
        let done = if number < view.wave {
            *size
        } else if number == view.wave {
            view.installed.min(*size)
        } else {
            0
        };
        let mark = if number == view.wave { ">" } else { " " };
        out.push_str(&format!(
            "{mark} wave {number} {:>5}% {} {done}/{size}\n",
            view.waves.get(i).copied().unwrap_or(0.0),
            bar(done, *size, 30)
        ));
    }
    out.push_str(&format!(
        "  told {}, installed {}, failed {}, back on the previous version {}\n",
        view.told, view.installed, view.failed, view.restored
    ));
    if let Some(reason) = &view.reason {
        out.push_str(&format!("  {reason}\n"));
    }
    for gate in &view.gates {
        let (verdict, reason) = match &gate.verdict {
            GateVerdict::Pass => ("pass", None),
            GateVerdict::Fail(why) => ("fail", Some(why)),
            GateVerdict::Inconclusive(why) => ("inconclusive", Some(why)),
        };
        out.push_str(&format!(
            "  gate {:<17} {verdict}{}\n",
            gate.gate,
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ));
    }
    out
}
