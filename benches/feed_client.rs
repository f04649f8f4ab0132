//! The change feed benchmark's client (run by `benches/feed.py`): `SUBSCRIBERS` event streams
//! on one instance, writers creating users at `RATE` a second for `SECS` seconds through
//! another (or the same), and the delay from each create's response to its event's arrival at
//! each subscriber. Prints one JSON line.
//!
//! Usage: bench_feed STREAM_ADDR WRITE_ADDR KEYS(comma-separated) SUBSCRIBERS RATE SECS
//! With RATE 0 it only holds the streams open for SECS seconds and counts what they receive.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const WRITERS: usize = 50;

/// What one subscriber saw: each event's user id and arrival time (µs from the start).
struct Seen {
    arrivals: Vec<(u32, u32)>,
    bytes: u64,
}

async fn subscribe(
    addr: String,
    key: String,
    start: Instant,
    ready: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let request = format!(
        "GET /api/v1/events/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let finder = memchr::memmem::Finder::new(b"\"user.created\",\"user_id\":");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    let mut seen = Seen {
        arrivals: Vec::new(),
        bytes: 0,
    };
    let mut started = false;
    loop {
        let read = tokio::select! {
            read = stream.read(&mut buffer) => read.unwrap_or(0),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) { break } else { continue }
            }
        };
        if read == 0 {
            break;
        }
        let now = start.elapsed().as_micros() as u32;
        seen.bytes += read as u64;
        carry.extend_from_slice(&buffer[..read]);
        if !started {
            // The response head, then the stream's first frame (its starting `id:`).
            if let Some(at) = memchr::memmem::find(&carry, b"\n\n") {
                let head = String::from_utf8_lossy(&carry[..at]);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                started = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut last = 0;
        for found in finder.find_iter(&carry) {
            let digits = &carry[found + finder.needle().len()..];
            let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if len == digits.len() {
                break; // the number goes on in the next read
            }
            let id: u32 = std::str::from_utf8(&digits[..len])
                .unwrap()
                .parse()
                .unwrap();
            seen.arrivals.push((id, now));
            last = found + finder.needle().len() + len;
        }
        // Keep what may hold the start of a match cut off by this read.
        let keep_from = last.max(carry.len().saturating_sub(finder.needle().len() + 20));
        carry.drain(..keep_from);
    }
    seen
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, stream_addr, write_addr, keys, subscribers, rate, secs] = &args[..] else {
        panic!("usage: bench_feed STREAM_ADDR WRITE_ADDR KEYS SUBSCRIBERS RATE SECS");
    };
    let keys: Vec<String> = keys.split(',').map(String::from).collect();
    let subscribers: usize = subscribers.parse().unwrap();
    let rate: f64 = rate.parse().unwrap();
    let secs: f64 = secs.parse().unwrap();
    let start = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..subscribers)
        .map(|i| {
            tokio::spawn(subscribe(
                stream_addr.clone(),
                keys[i % keys.len()].clone(),
                start,
                ready.clone(),
                stop.clone(),
            ))
        })
        .collect();
    while ready.load(Ordering::Relaxed) < subscribers as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "subscribers did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected_at = start.elapsed();

    // Writers: creates at `rate` a second in all, each answer's time kept by the user's id.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..if rate > 0.0 { WRITERS } else { 0 })
        .map(|w| {
            let (client, url, key) = (
                client.clone(),
                format!("http://{write_addr}/api/v1/users"),
                keys[0].clone(),
            );
            let written = written.clone();
            tokio::spawn(async move {
                let period = Duration::from_secs_f64(WRITERS as f64 / rate);
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let until = Instant::now() + Duration::from_secs_f64(secs);
                let mut acks = Vec::new();
                let mut i = 0;
                while Instant::now() < until {
                    ticks.tick().await;
                    let body = format!(r#"{{"name":"Feed {w} {i}","role":"Bench"}}"#);
                    i += 1;
                    let response = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let text = response.text().await.unwrap();
                    let at = start.elapsed().as_micros() as u32;
                    let id = text
                        .strip_prefix(r#"{"id":"#)
                        .and_then(|rest| rest.split(',').next())
                        .and_then(|id| id.parse::<u32>().ok())
                        .unwrap_or_else(|| panic!("a created user: {text}"));
                    acks.push((id, at));
                    written.fetch_add(1, Ordering::Relaxed);
                }
                acks
            })
        })
        .collect();
    let mut acked: HashMap<u32, u32> = HashMap::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    if rate == 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
    // Let the last events arrive, then end the streams.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let (mut missing, mut duplicates, mut delivered, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for reader in readers {
        let seen = reader.await.unwrap();
        bytes += seen.bytes;
        delivered += seen.arrivals.len() as u64;
        let mut got: HashMap<u32, u32> = HashMap::with_capacity(seen.arrivals.len());
        for (id, at) in seen.arrivals {
            if got.insert(id, at).is_some() {
                duplicates += 1;
            }
        }
        for (id, acked_at) in &acked {
            match got.get(id) {
                Some(at) => latencies.push(at.saturating_sub(*acked_at)),
                None => missing += 1,
            }
        }
    }
    latencies.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "subscribers": subscribers,
            "connect_s": connected_at.as_secs_f64(),
            "writes": acked.len(),
            "write_rate": acked.len() as f64 / secs,
            "delivered": delivered,
            "delivered_mib": bytes as f64 / (1 << 20) as f64,
            "missing": missing,
            "duplicates": duplicates,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": percentile(&latencies, 1.0),
        })
    );
}
