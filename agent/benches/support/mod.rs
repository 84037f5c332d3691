//! Shared by the agent's benchmarks: HTTP load over keep-alive connections (Unix socket or
//! TCP), rounds and their medians, and the machine line. The load generator holds its own
//! keep-alive connections (hyper directly): measuring a server needs reused connections,
//! which the one HTTP client of our programs (a connection per request) does not keep.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Latencies of one round at one concurrency.
pub struct Round {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub errors: usize,
}

impl Round {
    pub fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy)]
pub struct Summary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub throughput: f64,
    pub errors: usize,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

pub fn summarize(mut rounds: Vec<Round>) -> Summary {
    let errors = rounds.iter().map(|r| r.errors).sum();
    rounds.retain(|r| !r.latencies.is_empty());
    if rounds.is_empty() {
        return Summary {
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            throughput: 0.0,
            errors,
        };
    }
    let p50 = rounds
        .iter_mut()
        .map(|r| r.percentile(0.5).as_secs_f64() * 1e6)
        .collect();
    let p99 = rounds
        .iter_mut()
        .map(|r| r.percentile(0.99).as_secs_f64() * 1e6)
        .collect();
    let throughput = rounds.iter().map(Round::throughput).collect();
    Summary {
        p50_us: median(p50),
        p99_us: median(p99),
        throughput: median(throughput),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Clone)]
pub struct HttpCase {
    pub target: Target,
    pub method: hyper::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

pub async fn connect(target: &Target) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    macro_rules! handshake {
        ($stream:expr) => {{
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            sender
        }};
    }
    match target {
        Target::Unix(path) => handshake!(tokio::net::UnixStream::connect(path).await.unwrap()),
        Target::Tcp(address) => {
            let stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.set_nodelay(true).unwrap();
            handshake!(stream)
        }
    }
}

/// `concurrency` keep-alive connections, each sending requests back to back.
pub async fn http_round(case: &HttpCase, concurrency: usize, seconds: f64) -> Round {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let case = case.clone();
        clients.push(tokio::spawn(async move {
            let mut sender = connect(&case.target).await;
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let begin = Instant::now();
                let mut request = Request::builder()
                    .uri(&case.path)
                    .header("host", "localhost");
                for (name, value) in &case.headers {
                    request = request.header(*name, value);
                }
                let request = request
                    .method(case.method.clone())
                    .body(Full::new(case.body.clone()))
                    .unwrap();
                // A server may close a keep-alive connection; count it and reconnect.
                let answer = match sender.ready().await {
                    Ok(()) => sender.send_request(request).await,
                    Err(error) => Err(error),
                };
                let ok = match answer {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        ok && response
                            .into_body()
                            .collect()
                            .await
                            .map(|b| std::hint::black_box(b.to_bytes()))
                            .is_ok()
                    }
                    Err(_) => {
                        sender = connect(&case.target).await;
                        false
                    }
                };
                if ok {
                    latencies.push(begin.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for client in clients {
        let (mut l, e) = client.await.unwrap();
        latencies.append(&mut l);
        errors += e;
    }
    Round {
        latencies,
        elapsed: started.elapsed(),
        errors,
    }
}

pub use flotilla_testkit::measure::machine;
