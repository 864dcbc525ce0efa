//! `tug-probe serve-grpc-health PORT DIR`: a gRPC health server (`grpc.health.v1.Health/Check`)
//! over plain HTTP/2, small enough for a static test binary: the status of service `S` is the
//! first line of `DIR/S` (`DIR/_` for the empty service: the server as a whole), read at each
//! call — `SERVING`, `NOT_SERVING`, … — and a service without a file is gRPC's NotFound
//! "unknown service", as grpc-go's health server answers. Request headers are not decoded
//! (every call is taken for a health check); answers use HPACK literals only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;

pub fn serve(port: u16, dir: PathBuf) -> ExitCode {
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tug-probe: cannot bind tcp port {port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for conn in listener.incoming().flatten() {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let _ = connection(conn, &dir);
        });
    }
    ExitCode::SUCCESS
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK literal header field without indexing, with a literal name.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    for s in [name, value] {
        out.push(u8::try_from(s.len()).unwrap_or(127).min(126));
        out.extend_from_slice(&s.as_bytes()[..s.len().min(126)]);
    }
}

/// The `service` field of a `HealthCheckRequest` in its gRPC frame.
fn service(body: &[u8]) -> String {
    let msg = body.get(5..).unwrap_or_default();
    match msg {
        [0x0a, n, rest @ ..] if usize::from(*n) <= rest.len() && *n < 0x80 => {
            String::from_utf8_lossy(&rest[..usize::from(*n)]).into_owned()
        }
        _ => String::new(),
    }
}

fn status_number(name: &str) -> u8 {
    match name {
        "SERVING" => 1,
        "NOT_SERVING" => 2,
        "SERVICE_UNKNOWN" => 3,
        _ => 0,
    }
}

/// The answer to one call on `stream`.
fn answer(stream: u32, body: &[u8], dir: &Path) -> Vec<u8> {
    let name = service(body);
    let file = if name.is_empty() { "_".to_string() } else { name.replace('/', "_") };
    let mut head = vec![0x88]; // :status 200
    literal(&mut head, "content-type", "application/grpc");
    let mut out = Vec::new();
    match std::fs::read_to_string(dir.join(file)) {
        Ok(s) => {
            let status = status_number(s.lines().next().unwrap_or("").trim());
            frame(&mut out, HEADERS, END_HEADERS, stream, &head);
            frame(&mut out, DATA, 0, stream, &[0, 0, 0, 0, 2, 0x08, status]);
            let mut trailers = Vec::new();
            literal(&mut trailers, "grpc-status", "0");
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &trailers);
        }
        Err(_) => {
            literal(&mut head, "grpc-status", "5");
            literal(&mut head, "grpc-message", "unknown service");
            frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, &head);
        }
    }
    out
}

fn connection(mut conn: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    conn.read_exact(&mut preface)?;
    if preface != PREFACE {
        return Ok(());
    }
    let mut out = Vec::new();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    conn.write_all(&out)?;
    let mut bodies: std::collections::HashMap<u32, Vec<u8>> = std::collections::HashMap::new();
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)?;
        let mut out = Vec::new();
        match kind {
            SETTINGS if flags & 1 == 0 => frame(&mut out, SETTINGS, 1, 0, &[]),
            PING if flags & 1 == 0 => frame(&mut out, PING, 1, 0, &payload),
            GOAWAY => return Ok(()),
            HEADERS => {
                bodies.entry(stream).or_default();
                if flags & END_STREAM != 0 {
                    out = answer(stream, &[], dir);
                }
            }
            DATA => {
                let data = if flags & PADDED != 0 {
                    let pad = usize::from(payload.first().copied().unwrap_or(0));
                    payload.get(1..payload.len().saturating_sub(pad)).unwrap_or_default().to_vec()
                } else {
                    payload
                };
                bodies.entry(stream).or_default().extend_from_slice(&data);
                if flags & END_STREAM != 0 {
                    let body = bodies.remove(&stream).unwrap_or_default();
                    out = answer(stream, &body, dir);
                }
            }
            _ => {}
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
        }
    }
}
