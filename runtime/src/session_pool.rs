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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_common::clock::Stopwatch;

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

/// Sessions and the bookkeeping that must outlive any one request: a request that is
/// cancelled (its client went away) while its run is on the blocking pool still returns the
/// session and its permit when the run ends.
#[derive(Debug)]
struct Shared {
    idle: Mutex<Vec<Session>>,
    /// One permit per session: holding one guarantees `idle` has a session to take.
    permits: Arc<Semaphore>,
    /// Moving average of run time, in nanoseconds (`UNMEASURED` until the first run).
    typical_run_nanos: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct SessionPool {
    model: String,
    version: u64,
    queue_depth: usize,
    shared: Arc<Shared>,
    waiting: Arc<AtomicUsize>,
}

/// Counts a request as waiting for a session until dropped, cancelled or not.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many runs may happen inline at once, across all models: one fewer than the async
/// workers, so a run that turns out slow can never stall the whole runtime.
fn inline_slots() -> &'static Semaphore {
    static SLOTS: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Semaphore::new(workers.saturating_sub(1).max(1))
    })
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
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(sessions.len())),
                idle: Mutex::new(sessions),
                typical_run_nanos: AtomicU64::new(UNMEASURED),
            }),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests waiting for a session of this model now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        let run_error = |message: String| InferError::Run {
            model: self.model.clone(),
            version: self.version,
            message,
        };
        let permit = match self.shared.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
                let _waiting = Waiting(self.waiting.clone());
                if waiting >= self.queue_depth {
                    return Err(InferError::Busy {
                        model: self.model.clone(),
                        version: self.version,
                        waiting,
                    });
                }
                self.shared
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| run_error("the model is being unloaded".into()))?
            }
        };
        let Some(mut session) = self
            .shared
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        else {
            return Err(run_error(
                "no free session although one was reserved (a bug: please report it)".into(),
            ));
        };
        let typical = self.shared.typical_run_nanos.load(Ordering::Relaxed);
        let input_bytes: usize = inputs.iter().map(|i| i.data.byte_len()).sum();
        let fast =
            typical < INLINE_RUN_LIMIT.as_nanos() as u64 && input_bytes <= INLINE_INPUT_LIMIT_BYTES;
        let inline_slot = if fast {
            inline_slots().try_acquire().ok()
        } else {
            None
        };
        let result = if inline_slot.is_some() {
            // Synchronous from here to the return of the session: nothing can cancel it.
            let (result, run_time) = run_guarded(&mut session, inputs, &outputs);
            self.shared.finish(session, permit, run_time, input_bytes);
            result
        } else {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || {
                let (result, run_time) = run_guarded(&mut session, inputs, &outputs);
                // Returned here, on the blocking thread: even if the request was dropped.
                shared.finish(session, permit, run_time, input_bytes);
                result
            })
            .await
            .map_err(|e| run_error(format!("the run was lost: {e}")))?
        };
        result.map_err(run_error)
    }
}

impl Shared {
    /// Gives the session back, then the permit (in that order, so the next holder of the
    /// permit finds it), and learns from the run time.
    fn finish(
        &self,
        session: Session,
        permit: tokio::sync::OwnedSemaphorePermit,
        run_time: Duration,
        input_bytes: usize,
    ) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session);
        drop(permit);
        // Only requests that could run inline teach the model's typical run time; a big
        // batch must not send the next small requests to the blocking pool.
        if input_bytes <= INLINE_INPUT_LIMIT_BYTES {
            let sample = run_time.as_nanos().min(u64::MAX as u128 / 2) as u64;
            let previous = self.typical_run_nanos.load(Ordering::Relaxed);
            // A slow run moves the estimate at once; fast runs bring it down gradually.
            let next = if previous == UNMEASURED || sample > previous {
                sample
            } else {
                (previous / 8) * 7 + sample / 8
            };
            self.typical_run_nanos.store(next, Ordering::Relaxed);
        }
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
    let started = Stopwatch::start();
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
