//! gRPC probes: one call of the gRPC health protocol (`grpc.health.v1.Health/Check`) over
//! HTTP/2 without TLS, as kubelet's prober makes it, with kubelet's words for each failure.
//! Runs on the calling thread (which the prober has put in the pod's network namespace): the
//! connection is made there, then driven by a current-thread runtime of its own.

use bytes::{Buf, Bytes, BytesMut};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus`, as gRPC names its values.
fn status_name(n: u64) -> String {
    match n {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// gRPC's status codes, as grpc-go prints them in an error.
fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// The request message: `HealthCheckRequest { service = 1 }`, in a gRPC frame (no
/// compression flag, a big-endian length).
pub fn request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(((v & 0x7f) as u8) | 0x80);
        v >>= 7;
    }
    out.push((v & 0x7f) as u8);
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a `HealthCheckResponse` in a gRPC frame; unknown fields are skipped.
pub fn response_status(frame: &[u8]) -> Result<u64, String> {
    if frame.len() < 5 {
        return Err("the health response has no message".into());
    }
    if frame[0] != 0 {
        return Err("the health response is compressed".into());
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let mut msg = frame.get(5..5 + len).ok_or("the health response is cut short")?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg).ok_or("a malformed health response")?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg).ok_or("a malformed health response")?,
            (_, 0) => {
                varint(&mut msg).ok_or("a malformed health response")?;
            }
            (_, 1) => msg = msg.get(8..).ok_or("a malformed health response")?,
            (_, 5) => msg = msg.get(4..).ok_or("a malformed health response")?,
            (_, 2) => {
                let n = varint(&mut msg).and_then(|n| usize::try_from(n).ok());
                msg = n.and_then(|n| msg.get(n..)).ok_or("a malformed health response")?;
            }
            _ => return Err("a malformed health response".into()),
        }
    }
    Ok(status)
}

/// Go's way of printing a duration of whole or fractional seconds (`1s`, `1.5s`).
fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The answer of one call: the HTTP status, the gRPC status and message, the body.
struct Answer {
    http: u16,
    grpc: Option<(u32, String)>,
    body: Bytes,
}

fn grpc_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let msg = h.get("grpc-message").and_then(|m| m.to_str().ok()).map(percent_decode).unwrap_or_default();
    Some((code, msg))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn call(stream: TcpStream, addr: SocketAddr, service: &str) -> Result<Answer, String> {
    let io = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/tug")
        .body(())
        .map_err(|e| e.to_string())?;
    let (resp, mut send) = client.send_request(req, false).map_err(|e| e.to_string())?;
    send.send_data(Bytes::from(request(service)), true).map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    let (parts, mut body) = resp.into_parts();
    let mut grpc = grpc_status(&parts.headers);
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        // A health response is a few bytes: a server sending more is not answering it.
        if data.len() + chunk.remaining() > 64 * 1024 {
            return Err("the health response is too large".into());
        }
        data.extend_from_slice(&chunk);
    }
    if let Some(trailers) = body.trailers().await.map_err(|e| e.to_string())? {
        grpc = grpc_status(&trailers).or(grpc);
    }
    Ok(Answer { http: parts.status.as_u16(), grpc, body: data.freeze() })
}

/// One gRPC probe of `service` at `addr` from the current network namespace, within
/// `timeout`: Ok when the service answers SERVING, else kubelet's words for why not.
pub fn probe(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            format!(
                "timeout: failed to connect service {:?} within {}: {e}",
                addr.to_string(),
                go_duration(timeout)
            )
        } else {
            format!("error: failed to connect service at {:?}: {e}", addr.to_string())
        }
    })?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let left = timeout.saturating_sub(start.elapsed());
    let answer = rt.block_on(async { tokio::time::timeout(left, call(stream, addr, service)).await });
    let answer = match answer {
        Err(_) => {
            return Err(format!("timeout: health rpc did not complete within {}", go_duration(timeout)));
        }
        Ok(Err(e)) => return Err(format!("error: health rpc probe failed: {e}")),
        Ok(Ok(a)) => a,
    };
    match answer.grpc {
        Some((0, _)) if answer.http == 200 => {}
        Some((12, msg)) => {
            return Err(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {msg}"
            ));
        }
        Some((4, _)) => {
            return Err(format!("timeout: health rpc did not complete within {}", go_duration(timeout)));
        }
        Some((code, msg)) => {
            return Err(format!(
                "error: health rpc probe failed: rpc error: code = {} desc = {msg}",
                code_name(code)
            ));
        }
        None => {
            return Err(format!(
                "error: health rpc probe failed: rpc error: code = Unknown desc = the server answered HTTP {} without a gRPC status",
                answer.http
            ));
        }
    }
    match response_status(&answer.body)? {
        1 => Ok(()),
        s => Err(format!("service unhealthy (responded with {:?})", status_name(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_frames_the_service() {
        assert_eq!(request(""), [0, 0, 0, 0, 0]);
        assert_eq!(request("db"), [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
    }

    #[test]
    fn the_response_status_is_read_past_unknown_fields() {
        // status = NOT_SERVING after an unknown length-delimited field 2.
        let frame = [0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2];
        assert_eq!(response_status(&frame), Ok(2));
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), Ok(0), "an empty message is UNKNOWN");
        assert!(response_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert!(response_status(&[]).is_err());
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("unknown%20service%"), "unknown service%");
    }

    #[test]
    fn nothing_listening_is_kubelets_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = probe(addr, "", Duration::from_secs(1)).unwrap_err();
        assert!(err.starts_with(&format!("error: failed to connect service at \"{addr}\"")), "{err}");
    }

    #[test]
    fn an_http1_server_is_not_a_health_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let err = probe(addr, "", Duration::from_secs(2)).unwrap_err();
        assert!(err.starts_with("error: health rpc probe failed: "), "{err}");
    }
}
