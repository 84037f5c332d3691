//! `flotilla trigger ...`: a model's retraining trigger rule, firing it by hand, and the
//! history of its runs.

use std::path::PathBuf;

use clap::Subcommand;
use flotilla_api::AdminClient;
use flotilla_api::triggers::{FireRequest, TriggerRule, TriggerRun, TriggerRunQuery};

use crate::commands::print_json;
use crate::format::{optional, utc};

#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Set MODEL's rule from a file (TOML, or JSON ending in .json); see docs/triggers.md.
    Set { model: String, rule: PathBuf },
    /// MODEL's rule (the webhook secret is not shown).
    Show { model: String },
    /// Remove MODEL's rule.
    Remove { model: String },
    /// Fire MODEL's trigger now (cooldown does not apply; a run in flight does).
    Fire {
        model: String,
        /// Why, for the payload and the history.
        #[arg(long)]
        note: Option<String>,
    },
    /// Trigger runs, newest first.
    History {
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One run with its payload.
    Run { id: String },
}

fn read_rule(path: &PathBuf) -> anyhow::Result<TriggerRule> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let rule = if path.extension().is_some_and(|e| e == "json") {
        TriggerRule::from_json(&text)
    } else {
        TriggerRule::from_toml(&text)
    };
    rule.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn print_runs(runs: &[TriggerRun]) {
    println!(
        "{:<22} {:<10} {:>7} {:<10} {:<11} {:>8}  {:<20}  OUTCOME",
        "RUN", "MODEL", "VERSION", "REASON", "STATUS", "ATTEMPTS", "FIRED (UTC)"
    );
    for run in runs {
        let outcome: String = run.outcome.replace('\n', " ").chars().take(80).collect();
        println!(
            "{:<22} {:<10} {:>7} {:<10} {:<11} {:>8}  {:<20}  {outcome}",
            run.id,
            run.model,
            optional(run.version),
            run.reason.as_str(),
            run.status.as_str(),
            run.attempts,
            utc(run.fired_at),
        );
    }
}

pub async fn trigger(
    client: &AdminClient,
    command: TriggerCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        TriggerCommand::Set { model, rule } => {
            let rule = read_rule(&rule)?;
            print_json(&client.set_trigger_rule(&model, &rule).await?)
        }
        TriggerCommand::Show { model } => print_json(&client.trigger_rule(&model).await?),
        TriggerCommand::Remove { model } => {
            client.remove_trigger_rule(&model).await?;
            println!("trigger rule of {model} removed");
            Ok(())
        }
        TriggerCommand::Fire { model, note } => {
            let run = client.fire_trigger(&model, &FireRequest { note }).await?;
            if json {
                return print_json(&run);
            }
            println!(
                "trigger run {} started ({}); flotilla trigger run {} follows it",
                run.id,
                run.status.as_str(),
                run.id
            );
            Ok(())
        }
        TriggerCommand::History { model, limit } => {
            let runs = client
                .trigger_runs(&TriggerRunQuery {
                    model,
                    limit: Some(limit),
                })
                .await?;
            if json {
                return print_json(&runs);
            }
            print_runs(&runs.runs);
            Ok(())
        }
        TriggerCommand::Run { id } => print_json(&client.trigger_run(&id).await?),
    }
}
