//! The `/metrics` endpoint of `run`: a minimal HTTP/1.1 server (GET only)
//! for Prometheus to scrape. Each scrape reads the pinned maps afresh.

use std::sync::{Arc, Mutex};

use log::warn;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    datapath::Paths,
    metrics::{AgentMetrics, exposition},
};

pub async fn serve(listener: TcpListener, paths: Paths, agent: Arc<Mutex<AgentMetrics>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (paths, agent) = (paths.clone(), agent.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, paths, agent).await {
                warn!("metrics request: {e}");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    paths: Paths,
    agent: Arc<Mutex<AgentMetrics>>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if target != "/metrics" && !target.starts_with("/metrics?") {
        (
            "404 Not Found",
            "text/plain",
            "segment serves /metrics\n".to_owned(),
        )
    } else {
        let snapshot = agent.lock().map(|m| m.clone()).unwrap_or_default();
        let stats = tokio::task::spawn_blocking(move || super::stats::collect(&paths)).await;
        match stats {
            Ok(Ok(v)) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                exposition(&v, &snapshot),
            ),
            Ok(Err(e)) => ("503 Service Unavailable", "text/plain", format!("{e:#}\n")),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
