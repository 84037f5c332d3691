//! A loopback TCP proxy per cohort in front of the broker, so a cohort's network can be cut
//! (every connection closed, new ones refused) and restored while the rest of the fleet and
//! the hub carry on, and shaped (latency, bandwidth, loss) as the scenario says. Async:
//! thousands of connections cost tasks, not threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::scenario::NetworkProfile;

/// What a lost chunk costs: TCP retransmits it after at least this long.
const RETRANSMISSION_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct CohortProxy {
    pub address: SocketAddr,
    plugged: Arc<AtomicBool>,
    /// Bumped on every unplug; connection tasks end when it changes.
    generation: watch::Sender<u64>,
}

impl CohortProxy {
    pub async fn start(
        upstream: SocketAddr,
        network: NetworkProfile,
    ) -> std::io::Result<CohortProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let plugged = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let proxy = CohortProxy {
            address,
            plugged: plugged.clone(),
            generation: generation.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !plugged.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if network.is_shaped() {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::select! {
                            _ = pump(client_read, server_write, network) => {}
                            _ = pump(server_read, client_write, network) => {}
                            _ = cut.changed() => {}
                        }
                    } else {
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// Cuts every connection through this proxy and refuses new ones.
    pub fn unplug(&self) {
        self.plugged.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn plug(&self) {
        self.plugged.store(true, Ordering::SeqCst);
    }

    pub fn is_plugged(&self) -> bool {
        self.plugged.load(Ordering::SeqCst)
    }
}

/// The delay one chunk of `len` bytes takes on a shaped link, given a draw in [0, 1) for loss.
pub fn chunk_delay(network: &NetworkProfile, len: usize, draw: f64) -> Duration {
    let mut delay = Duration::from_secs_f64(network.latency_ms / 1000.0);
    if network.bandwidth_kib_per_second > 0.0 {
        delay += Duration::from_secs_f64(len as f64 / (network.bandwidth_kib_per_second * 1024.0));
    }
    if draw < network.loss {
        delay += RETRANSMISSION_TIMEOUT;
    }
    delay
}

/// Copies one direction, delaying each chunk as the profile says (in order, as TCP would).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    network: NetworkProfile,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        let delay = chunk_delay(&network, n, flotilla_common::backoff::random_jitter());
        tokio::time::sleep(delay).await;
        to.write_all(&buffer[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaped_links_delay_by_latency_size_and_loss() {
        let network = NetworkProfile {
            latency_ms: 50.0,
            bandwidth_kib_per_second: 100.0,
            loss: 0.1,
        };
        assert_eq!(chunk_delay(&network, 0, 0.5), Duration::from_millis(50));
        // 10 KiB at 100 KiB/s: 100 ms more.
        assert_eq!(
            chunk_delay(&network, 10 * 1024, 0.5),
            Duration::from_millis(150)
        );
        // A lost chunk waits for the retransmission.
        assert_eq!(chunk_delay(&network, 0, 0.05), Duration::from_millis(250));
        assert_eq!(
            chunk_delay(&NetworkProfile::default(), 1 << 20, 0.0),
            Duration::ZERO
        );
    }

    #[tokio::test]
    async fn a_shaped_proxy_carries_bytes_late_and_an_unplugged_one_cuts() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let network = NetworkProfile {
            latency_ms: 40.0,
            ..NetworkProfile::default()
        };
        let proxy = CohortProxy::start(upstream_address, network).await.unwrap();
        let mut client = TcpStream::connect(proxy.address).await.unwrap();
        let started = std::time::Instant::now();
        client.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        // 40 ms each way.
        assert!(started.elapsed() >= Duration::from_millis(80));
        proxy.unplug();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .expect("the cut connection ends");
        assert!(read.is_err() || rest.is_empty());
    }
}
