//! The running agent's metrics server: `/metrics` over a minimal HTTP/1.1
//! server (GET only) for Prometheus to scrape. Each scrape reads the pinned
//! maps afresh, with [`crate::stats::collect`] (what `stats` prints).
//! The port is open to every local user: how many connections it serves,
//! and for how long, is bounded ([`super::limits`]).

use std::{
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use log::{debug, warn};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::limits::{
    self, Capped, HTTP_HEAD_BYTES, METRICS_CONNECTIONS, REQUEST_DEADLINE, Refusals, WRITE_DEADLINE,
};
use crate::{
    datapath::Paths,
    metrics::{AgentMetrics, exposition},
};

pub(super) async fn serve(listener: TcpListener, paths: Paths, agent: Arc<Mutex<AgentMetrics>>) {
    let open = Capped::new(METRICS_CONNECTIONS);
    let mut refusals = Refusals::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                limits::accept_failed("metrics", &e, &mut refusals).await;
                continue;
            }
        };
        // The last descriptors are the control socket's: an operator must
        // get through whatever is held open here.
        if !limits::leaves_reserve(stream.as_raw_fd()) {
            refusals.note("metrics", "too few file descriptors left");
            continue;
        }
        let Some(counted) = open.admit() else {
            refusals.note(
                "metrics",
                &format!("{METRICS_CONNECTIONS} connections are open already"),
            );
            continue;
        };
        let (paths, agent) = (paths.clone(), agent.clone());
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = answer(stream, paths, agent).await {
                warn!("metrics request: {e}");
            }
        });
    }
}

/// Reads an HTTP request head: `None` if it has not ended within
/// [`HTTP_HEAD_BYTES`] (the peer closing early ends it).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        let room = HTTP_HEAD_BYTES.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(Some(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(
    mut stream: TcpStream,
    paths: Paths,
    agent: Arc<Mutex<AgentMetrics>>,
) -> std::io::Result<()> {
    let Ok(head) = tokio::time::timeout(REQUEST_DEADLINE, read_head(&mut stream)).await else {
        debug!("metrics: closed a connection without a request head in {REQUEST_DEADLINE:?}");
        return Ok(());
    };
    let req_head = head?;
    let request = String::from_utf8_lossy(req_head.as_deref().unwrap_or_default());
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = if req_head.is_none() {
        (
            "431 Request Header Fields Too Large",
            "text/plain",
            format!("the request head is longer than {HTTP_HEAD_BYTES} bytes\n"),
        )
    } else if method != "GET" {
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
        let stats = tokio::task::spawn_blocking(move || crate::stats::collect(&paths)).await;
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
    // A peer that does not take its answer must not hold its place.
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_DEADLINE, write).await {
        Ok(r) => r,
        Err(_) => {
            debug!(
                "metrics: closed a connection that did not take its answer in {WRITE_DEADLINE:?}"
            );
            Ok(())
        }
    }
}
