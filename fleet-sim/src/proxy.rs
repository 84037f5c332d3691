//! A loopback TCP proxy per cohort in front of the broker, so a cohort's network can be cut
//! (every connection closed, new ones refused) and restored while the rest of the fleet and
//! the hub carry on. Async: thousands of connections cost tasks, not threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct CohortProxy {
    pub address: SocketAddr,
    plugged: Arc<AtomicBool>,
    /// Bumped on every unplug; connection tasks end when it changes.
    generation: watch::Sender<u64>,
}

impl CohortProxy {
    pub async fn start(upstream: SocketAddr) -> std::io::Result<CohortProxy> {
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
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
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
