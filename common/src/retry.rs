//! Retrying with jittered exponential backoff, written once: the agent's enrollment and
//! artifact downloads, the hub's trigger actions and its telemetry store all retry the same
//! way, so a fleet that lost its hub at one moment does not come back at one moment, and
//! each caller only says which errors are worth another attempt.
//!
//! `retry` waits with `tokio::time::sleep`, so tests on paused time (`start_paused = true`)
//! run minutes of backoff at once; `retry_blocking` is the same loop for a thread of its own
//! (the hub's ingest thread). Nothing is logged here: the caller's `classify` sees every
//! failure with the wait that follows it and logs what it needs.

use std::future::Future;
use std::time::Duration;

use crate::backoff::{backoff_delay, random_jitter};

/// How often and how patiently an operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry; each further retry waits twice as long.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// Attempts in all, the first one included (`Some(0)` is taken as `Some(1)`: the
    /// operation always runs once); `None` retries until success or a final error.
    pub attempts: Option<u32>,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry), given a `jitter` in
    /// [0, 1): between half and all of `base * 2^retry`, capped at `max`.
    pub fn delay_before_retry(&self, retry: u32, jitter: f64) -> Duration {
        backoff_delay(retry, self.base, self.max, jitter)
    }

    /// Whether the policy allows another attempt after `attempts_made` attempts.
    pub fn allows_another_attempt(&self, attempts_made: u32) -> bool {
        self.attempts
            .is_none_or(|limit| attempts_made < limit.max(1))
    }
}

/// What `classify` says about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Worth another attempt (when the policy has one left).
    Retry,
    /// Final: another attempt would fail the same way; `retry` returns this error.
    Stop,
}

/// One failed attempt, as `classify` sees it beside the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedAttempt {
    /// 0 for the first attempt.
    pub number: u32,
    /// How long `retry` waits before the next attempt if `classify` answers `Retry`; `None`
    /// when this was the last attempt the policy allows (the error is returned either way).
    pub retry_in: Option<Duration>,
}

/// Runs `operation` (given the attempt number, 0 first) until it succeeds, `classify` calls
/// its error final, or the policy's attempts are used up; then returns the value or the
/// last error. `classify` is called after every failure, the last one included.
pub async fn retry<T, E, Operation, Attempt, Classify>(
    policy: &RetryPolicy,
    mut operation: Operation,
    mut classify: Classify,
) -> Result<T, E>
where
    Operation: FnMut(u32) -> Attempt,
    Attempt: Future<Output = Result<T, E>>,
    Classify: FnMut(&E, FailedAttempt) -> RetryDecision,
{
    let mut number = 0u32;
    loop {
        let error = match operation(number).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        match next_wait(policy, &error, number, &mut classify) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(error),
        }
        number = number.saturating_add(1);
    }
}

/// `retry` for blocking code on a thread of its own: the same policy and decisions, waits
/// with `std::thread::sleep`.
pub fn retry_blocking<T, E>(
    policy: &RetryPolicy,
    mut operation: impl FnMut(u32) -> Result<T, E>,
    mut classify: impl FnMut(&E, FailedAttempt) -> RetryDecision,
) -> Result<T, E> {
    let mut number = 0u32;
    loop {
        let error = match operation(number) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        match next_wait(policy, &error, number, &mut classify) {
            Some(delay) => std::thread::sleep(delay),
            None => return Err(error),
        }
        number = number.saturating_add(1);
    }
}

/// The wait before the next attempt after failure `number`, or `None` to give up.
fn next_wait<E>(
    policy: &RetryPolicy,
    error: &E,
    number: u32,
    classify: &mut impl FnMut(&E, FailedAttempt) -> RetryDecision,
) -> Option<Duration> {
    let retry_in = policy
        .allows_another_attempt(number.saturating_add(1))
        .then(|| policy.delay_before_retry(number, random_jitter()));
    match (
        classify(error, FailedAttempt { number, retry_in }),
        retry_in,
    ) {
        (RetryDecision::Retry, Some(delay)) => Some(delay),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use tokio::time::Instant;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        attempts: Some(5),
    };

    #[derive(Debug, PartialEq)]
    enum Failure {
        Transient(u32),
        Final(u32),
    }

    fn transient_unless_final(error: &Failure, _: FailedAttempt) -> RetryDecision {
        match error {
            Failure::Transient(_) => RetryDecision::Retry,
            Failure::Final(_) => RetryDecision::Stop,
        }
    }

    #[test]
    fn the_blocking_loop_retries_until_success_or_a_final_error() {
        let quick = RetryPolicy {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
            attempts: Some(5),
        };
        let mut calls = 0;
        let value = retry_blocking(
            &quick,
            |n| {
                calls += 1;
                if n < 2 {
                    Err(Failure::Transient(n))
                } else {
                    Ok(n)
                }
            },
            transient_unless_final,
        );
        assert_eq!((value, calls), (Ok(2), 3));
        let stopped: Result<u32, Failure> =
            retry_blocking(&quick, |n| Err(Failure::Final(n)), transient_unless_final);
        assert_eq!(stopped, Err(Failure::Final(0)));
        let exhausted: Result<u32, Failure> = retry_blocking(
            &quick,
            |n| Err(Failure::Transient(n)),
            transient_unless_final,
        );
        assert_eq!(exhausted, Err(Failure::Transient(4)));
    }

    #[test]
    fn the_policy_doubles_caps_and_counts_attempts() {
        assert_eq!(
            POLICY.delay_before_retry(0, 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            POLICY.delay_before_retry(2, 1.0),
            Duration::from_millis(400)
        );
        assert_eq!(POLICY.delay_before_retry(9, 1.0), Duration::from_secs(1));
        assert_eq!(
            POLICY.delay_before_retry(2, 0.0),
            Duration::from_millis(200)
        );
        assert!(POLICY.allows_another_attempt(4));
        assert!(!POLICY.allows_another_attempt(5));
        let once = RetryPolicy {
            attempts: Some(0),
            ..POLICY
        };
        assert!(once.allows_another_attempt(0));
        assert!(!once.allows_another_attempt(1));
        let forever = RetryPolicy {
            attempts: None,
            ..POLICY
        };
        assert!(forever.allows_another_attempt(u32::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_failures_returns_the_value_after_the_backoff() {
        let started = Instant::now();
        let seen = RefCell::new(Vec::new());
        let result = retry(
            &POLICY,
            |attempt| async move {
                if attempt < 3 {
                    Err(Failure::Transient(attempt))
                } else {
                    Ok(attempt * 10)
                }
            },
            |error: &Failure, failed| {
                seen.borrow_mut().push((failed.number, failed.retry_in));
                transient_unless_final(error, failed)
            },
        )
        .await;
        assert_eq!(result, Ok(30));
        let seen = seen.into_inner();
        assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 1, 2]);
        // Waits of 100, 200 and 400 ms, each jittered down to half at most.
        let waited: Duration = seen.iter().map(|(_, d)| d.unwrap()).sum();
        // Tokio's timer rounds each wait up to the next millisecond.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= waited && elapsed <= waited + Duration::from_millis(3),
            "{elapsed:?} for waits of {waited:?}"
        );
        assert!(
            (Duration::from_millis(350)..=Duration::from_millis(700)).contains(&waited),
            "{waited:?}"
        );
        for (number, delay) in seen {
            let full = Duration::from_millis(100 * (1 << number));
            assert!((full / 2..=full).contains(&delay.unwrap()), "{delay:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_error_is_returned_when_the_attempts_run_out() {
        let started = Instant::now();
        let mut attempts = 0;
        let mut last_retry_in = Some(Duration::ZERO);
        let result: Result<(), Failure> = retry(
            &POLICY,
            |attempt| {
                attempts += 1;
                async move { Err(Failure::Transient(attempt)) }
            },
            |error, failed| {
                last_retry_in = failed.retry_in;
                transient_unless_final(error, failed)
            },
        )
        .await;
        assert_eq!(result, Err(Failure::Transient(4)));
        assert_eq!(attempts, 5);
        assert_eq!(
            last_retry_in, None,
            "the last failure is told no retry follows"
        );
        // Four waits: 100 + 200 + 400 + 800 ms at most, half of each at least.
        assert!(
            (Duration::from_millis(750)..=Duration::from_millis(1500)).contains(&started.elapsed()),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_stops_at_once_without_waiting() {
        let started = Instant::now();
        let mut attempts = 0;
        let result: Result<(), Failure> = retry(
            &POLICY,
            |attempt| {
                attempts += 1;
                async move {
                    if attempt == 0 {
                        Err(Failure::Transient(attempt))
                    } else {
                        Err(Failure::Final(attempt))
                    }
                }
            },
            transient_unless_final,
        )
        .await;
        assert_eq!(result, Err(Failure::Final(1)));
        assert_eq!(attempts, 2);
        assert!(started.elapsed() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_it_retries_until_success_with_waits_capped_at_max() {
        let started = Instant::now();
        let forever = RetryPolicy {
            attempts: None,
            ..POLICY
        };
        let mut longest = Duration::ZERO;
        let result = retry(
            &forever,
            |attempt| async move {
                if attempt < 40 {
                    Err(Failure::Transient(attempt))
                } else {
                    Ok(attempt)
                }
            },
            |error, failed| {
                longest = longest.max(failed.retry_in.expect("no limit"));
                transient_unless_final(error, failed)
            },
        )
        .await;
        assert_eq!(result, Ok(40));
        assert!(longest <= Duration::from_secs(1), "{longest:?}");
        // Most of the 40 waits are at the 1 s cap, jittered to at least half of it.
        assert!(
            started.elapsed() >= Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_attempt_policy_runs_once_and_never_sleeps() {
        let started = Instant::now();
        let once = RetryPolicy {
            attempts: Some(1),
            ..POLICY
        };
        let mut calls = 0;
        let result: Result<(), Failure> = retry(
            &once,
            |attempt| {
                calls += 1;
                async move { Err(Failure::Transient(attempt)) }
            },
            transient_unless_final,
        )
        .await;
        assert_eq!(result, Err(Failure::Transient(0)));
        assert_eq!(calls, 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
