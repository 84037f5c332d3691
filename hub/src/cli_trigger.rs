//! `flotilla trigger ...`: a model's retraining trigger rule, firing it by hand, and the
//! history of its runs.

use std::path::PathBuf;

use clap::Subcommand;
use hyper::Method;

use crate::cli::{query_escape, utc};
use crate::client::AdminClient;
use crate::triggers::rule::TriggerRule;

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

fn print_runs(runs: &[serde_json::Value]) {
    println!(
        "{:<22} {:<10} {:>7} {:<10} {:<11} {:>8}  {:<20}  OUTCOME",
        "RUN", "MODEL", "VERSION", "REASON", "STATUS", "ATTEMPTS", "FIRED (UTC)"
    );
    for run in runs {
        let outcome: String = run["outcome"]
            .as_str()
            .unwrap_or("")
            .replace('\n', " ")
            .chars()
            .take(80)
            .collect();
        println!(
            "{:<22} {:<10} {:>7} {:<10} {:<11} {:>8}  {:<20}  {outcome}",
            run["id"].as_str().unwrap_or(""),
            run["model"].as_str().unwrap_or(""),
            run["version"]
                .as_u64()
                .map_or("-".to_owned(), |v| v.to_string()),
            run["reason"].as_str().unwrap_or(""),
            run["status"].as_str().unwrap_or(""),
            run["attempts"],
            utc(run["fired_at"].as_i64().unwrap_or(0)),
        );
    }
}

pub async fn trigger(
    client: &AdminClient,
    command: TriggerCommand,
    json: bool,
) -> anyhow::Result<()> {
    let path = |model: &str| format!("/api/v1/models/{}/trigger", query_escape(model));
    let answer = match &command {
        TriggerCommand::Set { model, rule } => {
            let rule = read_rule(rule)?;
            let body = serde_json::to_value(rule)?;
            client.json(Method::PUT, &path(model), Some(body)).await?
        }
        TriggerCommand::Show { model } => client.json(Method::GET, &path(model), None).await?,
        TriggerCommand::Remove { model } => {
            client
                .request(
                    Method::DELETE,
                    &path(model),
                    "application/json",
                    Default::default(),
                )
                .await?;
            println!("trigger rule of {model} removed");
            return Ok(());
        }
        TriggerCommand::Fire { model, note } => {
            let run = client
                .json(
                    Method::POST,
                    &format!("{}/fire", path(model)),
                    Some(serde_json::json!({"note": note})),
                )
                .await?;
            if !json {
                println!(
                    "trigger run {} started ({}); flotilla trigger run {} follows it",
                    run["id"].as_str().unwrap_or(""),
                    run["status"].as_str().unwrap_or(""),
                    run["id"].as_str().unwrap_or("")
                );
                return Ok(());
            }
            run
        }
        TriggerCommand::History { model, limit } => {
            let mut query = format!("/api/v1/triggers?limit={limit}");
            if let Some(model) = model {
                query.push_str(&format!("&model={}", query_escape(model)));
            }
            let answer = client.json(Method::GET, &query, None).await?;
            if !json {
                print_runs(answer["runs"].as_array().map_or(&[], |v| v.as_slice()));
                return Ok(());
            }
            answer
        }
        TriggerCommand::Run { id } => {
            client
                .json(
                    Method::GET,
                    &format!("/api/v1/triggers/{}", query_escape(id)),
                    None,
                )
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
