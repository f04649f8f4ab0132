//! The benchmark's ceiling: bare hyper answering every request with one constant JSON user.
//! No routing, no database, no auth; what is left is the HTTP stack and the loopback.
//! Usage: bench_baseline ADDR (prints the bound address on stdout).

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USER: &str = r#"{"id":1,"name":"Alice","role":"Developer","email":"alice@example.com","created_at":"2026-11-24T09:30:00+00:00","updated_at":"2026-11-24T09:30:00+00:00","created_by":"api-key:1","updated_by":"api-key:1"}"#;

async fn answer(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(USER.as_bytes())))
        .expect("a valid response"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .expect("an address");
    let listener = TcpListener::bind(addr).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
