//! The hub's ticks (re-signing, rollout steps, drift evaluation, trigger passes) through one
//! helper, so each one waits the same way on tokio time (paused-time tests drive them), runs
//! its rounds one at a time, and logs a failed or panicking round with the task's name
//! instead of dying silently.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::MissedTickBehavior;

/// Runs the future `round()` makes now and then every `every`, one round at a time: a round
/// longer than `every` delays the next rather than bunching rounds up. Each round runs in its
/// own task, so a panic ends that round only; failures and panics are logged with `name`.
/// The task runs until aborted or the runtime stops.
pub fn spawn_periodic<Round, RoundFuture, E>(
    name: &'static str,
    every: Duration,
    mut round: Round,
) -> JoinHandle<()>
where
    Round: FnMut() -> RoundFuture + Send + 'static,
    RoundFuture: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    spawn_rounds(name, every, move || tokio::spawn(round()))
}

/// `spawn_periodic` for blocking work (SQLite, signing): each round runs on tokio's blocking
/// pool so the async workers stay free.
pub fn spawn_periodic_blocking<Round, E>(
    name: &'static str,
    every: Duration,
    round: Round,
) -> JoinHandle<()>
where
    Round: Fn() -> Result<(), E> + Send + Sync + 'static,
    E: Display + Send + 'static,
{
    let round = Arc::new(round);
    spawn_rounds(name, every, move || {
        let round = round.clone();
        tokio::task::spawn_blocking(move || round())
    })
}

fn spawn_rounds<Start, E>(name: &'static str, every: Duration, mut start: Start) -> JoinHandle<()>
where
    Start: FnMut() -> JoinHandle<Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match start().await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(task = name, %error, "{name} failed"),
                Err(error) if error.is_panic() => {
                    let panic = panic_message(error);
                    tracing::error!(task = name, %panic, "{name} panicked; it runs again next tick");
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
        }
    })
}

fn panic_message(error: JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Log lines written while a test runs, for the assertions about names.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        fn install(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .finish(),
            )
        }
    }

    /// Lets the spawned rounds run at the current (paused) instant.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_run_at_once_then_every_period_and_outlive_failures_and_panics() {
        let logs = Captured::default();
        let _guard = logs.install();
        let rounds = Arc::new(AtomicUsize::new(0));
        let counted = rounds.clone();
        let task = spawn_periodic("sample step", Duration::from_secs(5), move || {
            let round = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match round {
                    2 => Err(format!("round {round} went wrong")),
                    3 => panic!("round {round} blew up"),
                    _ => Ok(()),
                }
            }
        });
        settle().await;
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            1,
            "the first round runs at once"
        );
        tokio::time::sleep(Duration::from_millis(4900)).await;
        settle().await;
        assert_eq!(rounds.load(Ordering::SeqCst), 1, "not before the period");
        for expected in 2..=4 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            settle().await;
            assert_eq!(rounds.load(Ordering::SeqCst), expected);
        }
        let text = logs.text();
        assert!(
            text.contains("sample step failed") && text.contains("round 2 went wrong"),
            "{text}"
        );
        assert!(
            text.contains("sample step panicked") && text.contains("round 3 blew up"),
            "{text}"
        );
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_round_delays_the_next_instead_of_bunching_them() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorded = starts.clone();
        let began = tokio::time::Instant::now();
        let task = spawn_periodic("slow step", Duration::from_secs(2), move || {
            recorded.lock().unwrap().push(began.elapsed().as_secs());
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<(), std::convert::Infallible>(())
            }
        });
        tokio::time::sleep(Duration::from_secs(21)).await;
        task.abort();
        // Rounds of 5 s every 2 s: each starts when the last ended, one at a time.
        assert_eq!(*starts.lock().unwrap(), [0, 5, 10, 15, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_rounds_run_on_the_blocking_pool_and_log_with_the_name() {
        let logs = Captured::default();
        let _guard = logs.install();
        let runtime_thread = std::thread::current().id();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = spawn_periodic_blocking("sample pass", Duration::from_secs(60), move || {
            tx.send(std::thread::current().id()).unwrap();
            Err("the store is locked")
        });
        let first = rx.recv().await.unwrap();
        assert_ne!(
            first, runtime_thread,
            "a blocking round runs off the runtime's thread"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        rx.recv().await.unwrap();
        // The round ends on another thread; a millisecond of paused time at a time.
        for _ in 0..1000 {
            if logs.text().matches("sample pass failed").count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let text = logs.text();
        assert_eq!(
            text.matches("sample pass failed").count(),
            2,
            "every failed round is logged: {text}"
        );
        assert!(text.contains("the store is locked"), "{text}");
        task.abort();
    }
}
