//! A fixed set of worker threads, each owning one ONNX Runtime session of the same model.
//!
//! `Session::run` takes `&mut self` (ORT internals are not thread safe), so parallelism comes
//! from several sessions. Requests queue on a bounded channel: a full queue is answered at
//! once with "busy" instead of growing memory. When the pool is dropped the workers finish the
//! queued jobs and exit; in-flight requests hold the pool alive through their `Arc`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_channel::{Sender, TrySendError, bounded};
use flotilla_proto::inference::TensorData;
use ort::session::Session;
use tokio::sync::oneshot;

use super::conversion::{from_ort_value, to_ort_value};

/// A named tensor with its shape, in or out of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferError {
    #[error(
        "model {model} version {version} has {queued} requests queued, its limit; retry later or raise queue_depth"
    )]
    Busy {
        model: String,
        version: u64,
        queued: usize,
    },
    #[error("model {model} version {version} is shutting down; retry")]
    ShuttingDown { model: String, version: u64 },
    #[error("ONNX Runtime could not run model {model} version {version}: {message}")]
    Run {
        model: String,
        version: u64,
        message: String,
    },
}

struct Job {
    inputs: Vec<NamedTensor>,
    outputs: Vec<String>,
    reply: oneshot::Sender<Result<Vec<NamedTensor>, String>>,
}

#[derive(Debug)]
pub(crate) struct SessionPool {
    model: String,
    version: u64,
    queue_depth: usize,
    jobs: Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

impl SessionPool {
    pub(crate) fn start(
        model: &str,
        version: u64,
        sessions: Vec<Session>,
        queue_depth: usize,
    ) -> SessionPool {
        let (jobs, queue) = bounded::<Job>(queue_depth.max(1));
        for (index, mut session) in sessions.into_iter().enumerate() {
            let queue = queue.clone();
            let thread_name = format!("ort-{model}-v{version}-{index}");
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || {
                    for job in queue.iter() {
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            run(&mut session, job.inputs, &job.outputs)
                        }))
                        .unwrap_or_else(|_| {
                            Err("ONNX Runtime panicked; the session was kept".to_owned())
                        });
                        // The requester may have gone away (client disconnected); nothing to do.
                        let _ = job.reply.send(result);
                    }
                })
                .expect("the OS lets the agent start a worker thread");
        }
        SessionPool {
            model: model.to_owned(),
            version,
            queue_depth,
            jobs,
        }
    }

    pub(crate) async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        let (reply, answer) = oneshot::channel();
        let (model, version) = (self.model.clone(), self.version);
        match self.jobs.try_send(Job {
            inputs,
            outputs,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(InferError::Busy {
                    model,
                    version,
                    queued: self.queue_depth,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(InferError::ShuttingDown { model, version });
            }
        }
        match answer.await {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(message)) => Err(InferError::Run {
                model,
                version,
                message,
            }),
            Err(_) => Err(InferError::ShuttingDown { model, version }),
        }
    }
}

fn run(
    session: &mut Session,
    inputs: Vec<NamedTensor>,
    outputs: &[String],
) -> Result<Vec<NamedTensor>, String> {
    let mut values = Vec::with_capacity(inputs.len());
    for input in inputs {
        let value = to_ort_value(input.data, &input.shape)
            .map_err(|e| format!("input {:?}: {e}", input.name))?;
        values.push((input.name, value));
    }
    let results = session.run(values).map_err(|e| e.to_string())?;
    outputs
        .iter()
        .map(|name| {
            let value = results
                .get(name)
                .ok_or_else(|| format!("ONNX Runtime returned no output {name:?}"))?;
            let (shape, data) =
                from_ort_value(value).map_err(|e| format!("output {name:?}: {e}"))?;
            Ok(NamedTensor {
                name: name.clone(),
                shape,
                data,
            })
        })
        .collect()
}
