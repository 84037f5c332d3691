//! Where the inference path records what it saw: window accumulators sharded so concurrent
//! requests rarely touch the same lock. Each thread sticks to one shard (assigned round
//! robin on first use); the window closer takes every shard's accumulators and merges them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_common::clock::SharedClock;
use flotilla_proto::telemetry::FeatureMap;

use super::window::{CaptureLimits, WindowAccumulator};

type Shard = HashMap<String, HashMap<u64, WindowAccumulator>>;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
pub struct Recorder {
    shards: Box<[Mutex<Shard>]>,
    /// Data capture limits by model name (absent: capture off).
    capture: HashMap<String, CaptureLimits>,
    /// The device's clock (capture times).
    pub clock: SharedClock,
}

impl Recorder {
    pub fn new(capture: HashMap<String, CaptureLimits>, clock: SharedClock) -> Recorder {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Recorder {
            shards: (0..cores * 2).map(|_| Mutex::new(Shard::new())).collect(),
            capture,
            clock,
        }
    }

    pub fn capture_limits(&self, model: &str) -> Option<CaptureLimits> {
        self.capture.get(model).copied()
    }

    /// Runs `update` on this thread's accumulator for the model version.
    pub fn record(
        &self,
        model: &str,
        version: u64,
        map: Option<&Arc<FeatureMap>>,
        update: impl FnOnce(&mut WindowAccumulator),
    ) {
        let index = THREAD_SHARD.with(|i| *i) % self.shards.len();
        let mut shard = self.shards[index].lock().unwrap_or_else(|e| e.into_inner());
        if !shard.contains_key(model) {
            shard.insert(model.to_owned(), HashMap::new());
        }
        let versions = shard.get_mut(model).expect("inserted above");
        let window = versions
            .entry(version)
            .or_insert_with(|| WindowAccumulator::new(map.cloned()));
        update(window);
    }

    /// Requests recorded in the open window, not yet sealed (what a crash would lose).
    pub fn pending_requests(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .flat_map(|versions| versions.values())
                    .map(|window| window.requests)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Takes everything recorded since the last call, merged per model version.
    pub fn take(&self) -> Vec<(String, u64, WindowAccumulator)> {
        let mut merged: HashMap<(String, u64), WindowAccumulator> = HashMap::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            for (model, versions) in taken {
                for (version, window) in versions {
                    match merged.get_mut(&(model.clone(), version)) {
                        Some(existing) => {
                            if let Err(error) = existing.merge(window) {
                                tracing::error!(%model, version, %error, "cannot merge window shards");
                            }
                        }
                        None => {
                            merged.insert((model.clone(), version), window);
                        }
                    }
                }
            }
        }
        let mut out: Vec<_> = merged.into_iter().map(|((m, v), w)| (m, v, w)).collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }
}
