//! The few lines of systemd's notify protocol (`sd_notify(3)`) a `Type=notify` service
//! needs: tell the manager when it is ready and that it is alive (`WatchdogSec=`), and that
//! it is stopping. Each message is one datagram of `KEY=VALUE` lines sent to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` for Linux's abstract namespace). Without
//! that variable (not started by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, read once from the environment.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (a watchdog meant for
    /// another process, as after a fork, is not ours).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self::new(
            var("NOTIFY_SOCKET"),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    fn new(
        socket: Option<String>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Self {
        let ours = watchdog_pid.is_none_or(|pid| pid.parse() == Ok(own_pid));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, as `sd_watchdog_enabled(3)`
    /// advises, or None when no watchdog is asked for.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Ticks at the watchdog interval, or never when no watchdog is asked for: a branch of
    /// the main loop's `select!` that pings when it fires.
    pub fn watchdog_ticker(&self) -> WatchdogTicker {
        WatchdogTicker(self.watchdog_interval().map(tokio::time::interval))
    }

    /// `READY=1` with a status line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STOPPING=1`: shutting down on request, so a slow stop is not taken for a hang.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `RELOADING=1`: a reload (SIGHUP) under way; `ready` again when it is done.
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// A status line alone (e.g. "waiting for the hub").
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    fn send(&self, message: &str) {
        let Some(socket) = &self.socket else { return };
        if let Err(error) = send_datagram(socket, message.as_bytes()) {
            // Not fatal: the service still runs; systemd will say it never became ready.
            tracing::warn!(%error, socket, "cannot notify systemd");
        }
    }
}

/// SIGTERM and SIGINT, the two ways a service is asked to stop (systemd sends SIGTERM).
/// Installed before a service starts its slow work, so a stop asked at any point is seen.
#[derive(Debug)]
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

impl Notifier {
    /// A service's main loop once it is ready: pings the watchdog while `alive()` holds
    /// (a part that died stops the pings, so `WatchdogSec=` restarts the service) until a
    /// stop is asked, then says STOPPING.
    pub async fn serve_until_stopped(&self, signals: &mut StopSignals, alive: impl Fn() -> bool) {
        let mut watchdog = self.watchdog_ticker();
        loop {
            tokio::select! {
                _ = signals.recv() => break,
                _ = watchdog.tick() => {
                    if alive() {
                        self.watchdog();
                    }
                }
            }
        }
        self.stopping();
    }
}

/// See [`Notifier::watchdog_ticker`].
#[derive(Debug)]
pub struct WatchdogTicker(Option<tokio::time::Interval>);

impl WatchdogTicker {
    /// Waits for the next tick (forever without a watchdog).
    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

fn send_datagram(socket: &str, message: &[u8]) -> std::io::Result<usize> {
    let sender = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sender.send_to_addr(message, &address)
        }
        None => sender.send_to(message, socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_interval_is_half_the_timeout_and_only_for_this_process() {
        let ours = Notifier::new(None, Some("10000000"), Some("42"), 42);
        assert_eq!(ours.watchdog_interval(), Some(Duration::from_secs(5)));
        let no_pid = Notifier::new(None, Some("3000000"), None, 42);
        assert_eq!(
            no_pid.watchdog_interval(),
            Some(Duration::from_millis(1500))
        );
        for (usec, pid) in [
            (Some("10000000"), Some("41")),
            (Some("0"), None),
            (None, None),
        ] {
            assert_eq!(Notifier::new(None, usec, pid, 42).watchdog_interval(), None);
        }
        assert_eq!(
            Notifier::new(None, Some("nonsense"), None, 42).watchdog_interval(),
            None
        );
    }

    #[test]
    fn messages_arrive_on_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(path.display().to_string()), None, None, 1);
        notifier.ready("serving 2 models");
        notifier.watchdog();
        let mut buffer = [0u8; 256];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\nSTATUS=serving 2 models");
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"WATCHDOG=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("flotilla-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        Notifier::new(Some(format!("@{name}")), None, None, 1).stopping();
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"STOPPING=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        Notifier::new(None, None, None, 1).ready("x");
    }
}
