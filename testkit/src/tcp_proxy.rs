//! `TcpProxy`: a loopback TCP proxy a test can unplug and plug back, to cut a device off
//! the network without touching anything else.

/// A TCP proxy on loopback that the test can unplug (every connection cut, new ones refused
/// at once) and plug back: a device losing its network, without touching anything else.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    upstream: std::sync::Arc<std::sync::atomic::AtomicU16>,
    plugged: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    /// Listens now; forwards to the upstream port once `connect_to` names it.
    pub fn start() -> TcpProxy {
        use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let plugged = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let upstream = Arc::new(AtomicU16::new(0));
        let (p, c, u) = (plugged.clone(), connections.clone(), upstream.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !p.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) =
                    std::net::TcpStream::connect(("127.0.0.1", u.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                {
                    let mut list = c.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        TcpProxy {
            port,
            upstream,
            plugged,
            connections,
        }
    }

    pub fn connect_to(&self, upstream: u16) {
        self.upstream
            .store(upstream, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn unplug(&self) {
        self.plugged
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn plug(&self) {
        self.plugged
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
