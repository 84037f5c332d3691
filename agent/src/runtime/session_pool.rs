//! A fixed set of ONNX Runtime sessions of one model version, lent out one request at a time.
//!
//! `Session::run` takes `&mut self` (ORT internals are not thread safe), so parallelism comes
//! from several sessions. A request waits for a free session (at most `queue_depth` may wait;
//! past that it is refused at once as busy, so memory stays bounded).
//!
//! Where a run happens depends on how long this model takes: fast models (a typical run under
//! `INLINE_RUN_LIMIT`, e.g. trees and linear models taking microseconds) run right on the
//! async worker that holds the request, because handing them to another thread and back costs
//! two thread wake-ups, far more than the inference. Slower models run on tokio's blocking
//! pool so they never stall the async runtime. A model counts as slow until measured.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::inference::TensorData;
use ort::session::Session;
use tokio::sync::Semaphore;

use super::conversion::{from_ort_value, to_ort_value};

/// Runs typically shorter than this happen inline on the async worker.
const INLINE_RUN_LIMIT: Duration = Duration::from_micros(200);
/// Requests with more input than this never run inline, whatever the model's typical run:
/// a large batch to a fast model can still take long.
const INLINE_INPUT_LIMIT_BYTES: usize = 64 * 1024;
/// Marks "not measured yet" in `typical_run_nanos`.
const UNMEASURED: u64 = u64::MAX;

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
        "model {model} version {version} already has {waiting} requests waiting for a session, its limit; retry later or raise queue_depth"
    )]
    Busy {
        model: String,
        version: u64,
        waiting: usize,
    },
    #[error("ONNX Runtime could not run model {model} version {version}: {message}")]
    Run {
        model: String,
        version: u64,
        message: String,
    },
}

#[derive(Debug)]
pub(crate) struct SessionPool {
    model: String,
    version: u64,
    queue_depth: usize,
    idle: Mutex<Vec<Session>>,
    /// One permit per session: holding one guarantees `idle` has a session to take.
    permits: Semaphore,
    waiting: AtomicUsize,
    /// Moving average of run time, in nanoseconds (`UNMEASURED` until the first run).
    typical_run_nanos: AtomicU64,
}

impl SessionPool {
    pub(crate) fn new(
        model: &str,
        version: u64,
        sessions: Vec<Session>,
        queue_depth: usize,
    ) -> SessionPool {
        SessionPool {
            model: model.to_owned(),
            version,
            queue_depth,
            permits: Semaphore::new(sessions.len()),
            idle: Mutex::new(sessions),
            waiting: AtomicUsize::new(0),
            typical_run_nanos: AtomicU64::new(UNMEASURED),
        }
    }

    pub(crate) async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
                if waiting >= self.queue_depth {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(InferError::Busy {
                        model: self.model.clone(),
                        version: self.version,
                        waiting,
                    });
                }
                let acquired = self.permits.acquire().await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                acquired.expect("the semaphore is never closed")
            }
        };
        let mut session = self
            .idle
            .lock()
            .expect("session list lock is never poisoned")
            .pop()
            .expect("a permit guarantees an idle session");
        let typical = self.typical_run_nanos.load(Ordering::Relaxed);
        let input_bytes: usize = inputs.iter().map(|i| i.data.byte_len()).sum();
        let inline =
            typical < INLINE_RUN_LIMIT.as_nanos() as u64 && input_bytes <= INLINE_INPUT_LIMIT_BYTES;
        let (result, run_time) = if inline {
            run_guarded(&mut session, inputs, &outputs)
        } else {
            let (returned, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = run_guarded(&mut session, inputs, &outputs);
                (session, outcome)
            })
            .await
            .expect("run_guarded catches panics, so the blocking task cannot fail");
            session = returned;
            outcome
        };
        // Only requests that could run inline teach the model's typical run time; a big
        // batch must not send the next small requests to the blocking pool.
        if input_bytes <= INLINE_INPUT_LIMIT_BYTES {
            self.record_run_time(run_time);
        }
        self.idle
            .lock()
            .expect("session list lock is never poisoned")
            .push(session);
        drop(permit);
        result.map_err(|message| InferError::Run {
            model: self.model.clone(),
            version: self.version,
            message,
        })
    }

    fn record_run_time(&self, elapsed: Duration) {
        let sample = elapsed.as_nanos().min(u64::MAX as u128 / 2) as u64;
        let previous = self.typical_run_nanos.load(Ordering::Relaxed);
        let next = if previous == UNMEASURED {
            sample
        } else {
            (previous / 8) * 7 + sample / 8
        };
        self.typical_run_nanos.store(next, Ordering::Relaxed);
    }
}

/// Runs the session, turning a panic inside ONNX Runtime's bindings into an error so the
/// session goes back to the pool and the process stays up. Also returns how long the run
/// itself took (without any wait for a thread), which decides where the next runs happen.
fn run_guarded(
    session: &mut Session,
    inputs: Vec<NamedTensor>,
    outputs: &[String],
) -> (Result<Vec<NamedTensor>, String>, Duration) {
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| run(session, inputs, outputs)))
        .unwrap_or_else(|_| Err("ONNX Runtime panicked; the request was dropped".to_owned()));
    (result, started.elapsed())
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
