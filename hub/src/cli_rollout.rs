//! `flotilla rollout ...`: create rollouts from a spec file or flags, list them, watch one
//! wave by wave with its gate figures, and the operator's commands.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use hyper::Method;

use crate::client::AdminClient;
use crate::rollout::spec::RolloutSpec;

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
        /// Minimum seconds each wave runs before its gates may pass it.
        #[arg(long)]
        soak: Option<u64>,
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
    let mut value: serde_json::Value = match spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let parsed = if path.extension().is_some_and(|e| e == "json") {
                RolloutSpec::from_json(&text)
            } else {
                RolloutSpec::from_toml(&text)
            }
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_json::to_value(parsed)?
        }
        None => serde_json::json!({}),
    };
    let object = value.as_object_mut().expect("specs are objects");
    let mut set = |key: &str, v: serde_json::Value| {
        object.insert(key.to_owned(), v);
    };
    if let Some(m) = model {
        set("model", m.clone().into());
    }
    if let Some(v) = version {
        set("version", v.clone().into());
    }
    if let Some(w) = waves {
        set("waves", serde_json::json!(w));
    }
    if let Some(s) = selector {
        set("selector", s.clone().into());
    }
    if let Some(s) = soak {
        set("soak_seconds", (*s).into());
    }
    if let Some(f) = on_failure {
        set("on_failure", f.clone().into());
    }
    if let Some(a) = approve_before {
        set("approve_before", serde_json::json!(a));
    }
    Ok(RolloutSpec::from_json(&value.to_string())?)
}

pub async fn rollout(
    client: &AdminClient,
    command: RolloutCommand,
    json: bool,
) -> anyhow::Result<()> {
    let answer = match &command {
        RolloutCommand::Create { .. } => {
            let spec = spec_from(&command)?;
            client
                .json(
                    Method::POST,
                    "/api/v1/rollouts",
                    Some(serde_json::to_value(spec)?),
                )
                .await?
        }
        RolloutCommand::List => {
            let list = client.json(Method::GET, "/api/v1/rollouts", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<28} {:<22} {:>7} {:>9}  REASON",
                    "ID", "PHASE", "WAVE", "INSTALLED"
                );
                for r in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<22} {:>7} {:>9}  {}",
                        r["id"].as_str().unwrap_or(""),
                        r["phase"].as_str().unwrap_or(""),
                        format!(
                            "{}/{}",
                            r["wave"],
                            r["waves"].as_array().map_or(0, Vec::len)
                        ),
                        format!("{}/{}", r["installed"], r["targets"]),
                        r["reason"].as_str().unwrap_or("")
                    );
                }
            }
            return Ok(());
        }
        RolloutCommand::Status { id, watch } => {
            loop {
                let view = client
                    .json(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                } else {
                    if *watch {
                        // Clear the screen and redraw in place.
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", render_status(&view));
                }
                let finished = matches!(
                    view["phase"].as_str(),
                    Some("completed" | "rolled_back" | "aborted")
                );
                if !*watch || finished {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        RolloutCommand::Pause { id }
        | RolloutCommand::Resume { id }
        | RolloutCommand::Approve { id }
        | RolloutCommand::Abort { id }
        | RolloutCommand::Rollback { id }
        | RolloutCommand::Promote { id } => {
            let action = match &command {
                RolloutCommand::Pause { .. } => "pause",
                RolloutCommand::Resume { .. } => "resume",
                RolloutCommand::Approve { .. } => "approve",
                RolloutCommand::Abort { .. } => "abort",
                RolloutCommand::Rollback { .. } => "rollback",
                _ => "promote",
            };
            client
                .json(
                    Method::POST,
                    &format!("/api/v1/rollouts/{id}/{action}"),
                    None,
                )
                .await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render_status(&answer));
    }
    Ok(())
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// A rollout as text: one progress bar per wave, the reason, the last gate verdicts.
pub fn render_status(view: &serde_json::Value) -> String {
    let mut out = format!(
        "rollout {}: {} version {} to {} devices: {}\n",
        view["id"].as_str().unwrap_or("?"),
        view["model"].as_str().unwrap_or("?"),
        view["version"],
        view["targets"],
        view["phase"].as_str().unwrap_or("?"),
    );
    let wave = view["wave"].as_u64().unwrap_or(0) as usize;
    let installed = view["installed"].as_u64().unwrap_or(0) as usize;
    let sizes: Vec<usize> = view["wave_sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_u64().map(|s| s as usize))
        .collect();
    let waves = view["waves"].as_array().cloned().unwrap_or_default();
    for (i, size) in sizes.iter().enumerate() {
        let number = i + 1;
        let done = if number < wave {
            *size
        } else if number == wave {
            installed.min(*size)
        } else {
            0
        };
        let mark = if number == wave { ">" } else { " " };
        out.push_str(&format!(
            "{mark} wave {number} {:>5}% {} {done}/{size}\n",
            waves.get(i).and_then(|w| w.as_f64()).unwrap_or(0.0),
            bar(done, *size, 30)
        ));
    }
    out.push_str(&format!(
        "  told {}, installed {}, failed {}, back on the previous version {}\n",
        view["told"], view["installed"], view["failed"], view["restored"]
    ));
    if let Some(reason) = view["reason"].as_str() {
        out.push_str(&format!("  {reason}\n"));
    }
    for gate in view["gates"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  gate {:<17} {}{}\n",
            gate["gate"].as_str().unwrap_or("?"),
            gate["verdict"].as_str().unwrap_or("?"),
            gate["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
    }
    out
}
