//! The exact bytes of every answer roster writes itself, not relayed from
//! a backend: 404 no route, 503 no backend, 413 on the control API (408
//! and the 503 of a full listener are tested byte for byte beside their
//! builder). IPs 127.0.73.x.

mod common;

use std::time::Duration;

use common::Lb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send `request` raw and read the answer until the server closes, or
/// until one whole answer (head + content-length) is in.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !whole(&got) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("an answer within 5s")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn whole(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// The answer without its `date:` line (the only part that varies).
fn undated(answer: &str) -> String {
    answer
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_refusals_are_json_with_exact_lengths() {
    let lb = Lb::start(
        "127.0.73.1",
        &["--default-service", "", "--proxy-header-timeout", "5s"],
    )
    .await;
    let got = exchange(lb.proxy, b"GET / HTTP/1.1\r\nhost: nowhere.example\r\n\r\n").await;
    assert_eq!(
        undated(&got),
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\
         Connection: close\r\n\r\n{\"error\":\"no route\"}",
        "{got:?}"
    );

    let lb = Lb::start("127.0.73.2", &[]).await;
    let got = exchange(lb.proxy, b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n").await;
    assert_eq!(
        undated(&got),
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: 32\r\nConnection: keep-alive\r\n\r\n{\"error\":\"no backend available\"}",
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_body_over_the_cap_is_413_json() {
    let lb = Lb::start("127.0.73.3", &[]).await;
    let got = exchange(
        lb.control,
        b"POST /register HTTP/1.1\r\nhost: lb\r\ncontent-type: application/json\r\n\
          content-length: 10000000\r\n\r\n",
    )
    .await;
    let got = undated(&got);
    let (head, body) = got.split_once("\r\n\r\n").expect("a whole answer");
    assert!(
        head.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{got:?}"
    );
    assert!(head.contains("content-type: application/json"), "{got:?}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{got:?}"
    );
    assert!(body.starts_with("{\"error\":\"body larger than "), "{body}");
}
