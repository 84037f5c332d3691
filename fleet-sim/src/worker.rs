//! Spreading a fleet over processes. A process here may hold 20,000 open files and every
//! device keeps a socket and SQLite files open, so ten thousand devices need several
//! processes. The coordinator starts `flotilla-sim worker` children and talks to each with
//! JSON lines: it writes the `FleetSpec`, then `start`, `stop` and `exit`; the worker writes
//! `ready`, then a status with new events every half second, `stopped`, and ends.
//!
//! `FleetPart` hides where a part of the fleet runs, so the coordinator drives one in its
//! own process and several worker processes the same way.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::fleet::{Fleet, FleetEvent, FleetSpec, FleetStatus};
use crate::scenario::Scenario;

/// A line from a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WorkerMessage {
    Ready(FleetStatus),
    Status {
        status: FleetStatus,
        events: Vec<FleetEvent>,
    },
    Stopped(FleetStatus),
    Failed(String),
}

/// `flotilla-sim worker`: reads its spec from stdin and runs until told to exit.
pub async fn worker_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec: FleetSpec = serde_json::from_str(
        &lines
            .next_line()
            .await?
            .context("the coordinator sent no spec")?,
    )?;
    let say = |message: &WorkerMessage| {
        println!(
            "{}",
            serde_json::to_string(message).expect("messages serialize")
        )
    };
    let scenario = Scenario::load(&spec.scenario)?;
    let mut fleet = match Fleet::start(&spec, scenario).await {
        Ok(fleet) => fleet,
        Err(error) => {
            say(&WorkerMessage::Failed(format!("{error:#}")));
            bail!(error);
        }
    };
    say(&WorkerMessage::Ready(fleet.status().await));
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            line = lines.next_line() => match line?.as_deref() {
                Some("start") => fleet.start_traffic(),
                Some("stop") => {
                    fleet.stop_traffic().await?;
                    say(&WorkerMessage::Stopped(fleet.status().await));
                }
                Some("exit") | None => break,
                Some(other) => bail!("unknown command {other:?} from the coordinator"),
            },
            _ = ticks.tick() => {
                let events = fleet.tick().await;
                say(&WorkerMessage::Status { status: fleet.status().await, events });
            }
        }
    }
    fleet.shutdown().await;
    Ok(())
}

/// A worker process seen from the coordinator.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    messages: mpsc::UnboundedReceiver<WorkerMessage>,
    status: FleetStatus,
    events: Vec<FleetEvent>,
}

impl WorkerProcess {
    /// Starts `exe worker` and waits until its devices are enrolled and connected.
    pub async fn start(exe: &Path, spec: &FleetSpec) -> anyhow::Result<WorkerProcess> {
        let mut command = Command::new(exe);
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // Thousands of devices' tasks hop between threads; glibc's default of up to
            // eight arenas per core then holds about a third more memory (measured, 2,000
            // devices: 3.0 GiB vs 2.0 GiB).
            command.env("MALLOC_ARENA_MAX", "2");
        }
        let mut child = command
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start worker {}", exe.display()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, messages) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerMessage>(&line) {
                    Ok(message) => {
                        if tx.send(message).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("worker: {line}"),
                }
            }
        });
        stdin
            .write_all(format!("{}\n", serde_json::to_string(spec)?).as_bytes())
            .await?;
        let mut worker = WorkerProcess {
            child,
            stdin,
            messages,
            status: FleetStatus::default(),
            events: Vec::new(),
        };
        worker.status = worker
            .wait_for(|m| match m {
                WorkerMessage::Ready(status) => Some(status),
                _ => None,
            })
            .await?;
        Ok(worker)
    }

    async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("the worker is gone")
    }

    /// Reads messages until `want` picks one; statuses on the way are kept.
    async fn wait_for<T>(
        &mut self,
        want: impl Fn(WorkerMessage) -> Option<T>,
    ) -> anyhow::Result<T> {
        loop {
            match self.messages.recv().await {
                Some(WorkerMessage::Failed(error)) => bail!("worker failed: {error}"),
                Some(WorkerMessage::Status { status, events }) => {
                    self.status = status;
                    self.events.extend(events);
                }
                Some(other) => {
                    if let Some(found) = want(other) {
                        return Ok(found);
                    }
                }
                None => bail!("the worker ended unexpectedly (its errors are above)"),
            }
        }
    }

    /// Takes in what the worker said since the last call.
    fn drain(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            if let WorkerMessage::Status { status, events } = message {
                self.status = status;
                self.events.extend(events);
            }
        }
    }
}

/// A part of the fleet, in this process or in a worker.
#[derive(Debug)]
pub enum FleetPart {
    Local(Box<Fleet>),
    Worker(Box<WorkerProcess>),
}

impl FleetPart {
    pub async fn start_traffic(&mut self) -> anyhow::Result<()> {
        match self {
            FleetPart::Local(fleet) => {
                fleet.start_traffic();
                Ok(())
            }
            FleetPart::Worker(worker) => worker.send("start").await,
        }
    }

    /// Device-side events since the last call, and the latest status.
    pub async fn tick(&mut self) -> (Vec<FleetEvent>, FleetStatus) {
        match self {
            FleetPart::Local(fleet) => {
                let events = fleet.tick().await;
                (events, fleet.status().await)
            }
            FleetPart::Worker(worker) => {
                worker.drain();
                (std::mem::take(&mut worker.events), worker.status.clone())
            }
        }
    }

    pub async fn stop_traffic(&mut self) -> anyhow::Result<()> {
        match self {
            FleetPart::Local(fleet) => fleet.stop_traffic().await,
            FleetPart::Worker(worker) => {
                worker.send("stop").await?;
                worker.status = worker
                    .wait_for(|m| match m {
                        WorkerMessage::Stopped(status) => Some(status),
                        _ => None,
                    })
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn shutdown(self) -> anyhow::Result<()> {
        match self {
            FleetPart::Local(fleet) => {
                fleet.shutdown().await;
                Ok(())
            }
            FleetPart::Worker(mut worker) => {
                worker.send("exit").await?;
                let status = tokio::time::timeout(Duration::from_secs(120), worker.child.wait())
                    .await
                    .context("the worker did not exit")??;
                if !status.success() {
                    bail!("the worker exited with {status}");
                }
                Ok(())
            }
        }
    }
}
