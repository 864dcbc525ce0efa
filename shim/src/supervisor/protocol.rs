//! The supervisor's control protocol: newline-delimited JSON over the Unix socket
//! `<state>/<id>/control.sock`, one serde enum per direction.
//!
//! ```text
//!   client (agent)                          supervisor
//!   ──────────────                          ──────────
//!   connect
//!   Hello { version: 1 } ─────────────────► checks the version
//!                        ◄───────────────── Hello { version: 1, id, pid }   (or Error)
//!   State | Kill | Stats | Update ────────► Reply (State / Ok / Stats / Error)
//!   Wait ─────────────────────────────────► (held until the container exits)
//!                        ◄───────────────── Exited(ExitStatus)
//!   Shutdown ─────────────────────────────► Ok, then the supervisor exits (only once the
//!                                           container is gone and its status collected)
//! ```

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Client → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Hello {
        version: u32,
    },
    State,
    Wait,
    Kill {
        signal: i32,
        all: bool,
    },
    Stats,
    /// New cgroup limits in the OCI `linux.resources` shape (cpu and memory in place).
    Update {
        resources: serde_json::Value,
    },
    Shutdown,
}

/// How the container's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code as a shell reports it (128 + signal when killed).
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub started_at: String,
    pub finished_at: String,
}

/// Resource figures from the container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
}

/// Supervisor → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Hello { version: u32, id: String, pid: i32 },
    State { status: String, pid: i32, started_at: String, exit: Option<ExitStatus> },
    Exited(ExitStatus),
    Stats(Stats),
    Ok,
    Error { message: String },
}

/// What went wrong talking to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("supervisor connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("supervisor sent a bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the supervisor closed the connection")]
    Closed,
    #[error("supervisor: {0}")]
    Refused(String),
}

/// Writes one message as a JSON line.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// A blocking client of one supervisor.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// The container's id and its init's pid, from the handshake.
    pub id: String,
    pub pid: i32,
}

impl Client {
    /// Connects to `control.sock` and shakes hands.
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket)
            .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = Client { writer: stream, reader, id: String::new(), pid: 0 };
        match c.call(&Request::Hello { version: VERSION })? {
            Reply::Hello { id, pid, .. } => {
                c.id = id;
                c.pid = pid;
                Ok(c)
            }
            other => Err(ClientError::Refused(format!("unexpected handshake reply {other:?}"))),
        }
    }

    /// Bounds how long a call waits for its reply (`None`: forever, the default, which is
    /// what `Wait` on a long-running container needs).
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) {
        let _ = self.writer.set_read_timeout(timeout);
    }

    /// Sends a request and reads its reply (for `Wait`, when the container has exited).
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        send(&mut self.writer, req)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        match serde_json::from_str(&line)? {
            Reply::Error { message } => Err(ClientError::Refused(message)),
            reply => Ok(reply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_lines() {
        let mut buf = Vec::new();
        send(&mut buf, &Request::Kill { signal: 15, all: false }).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "{\"Kill\":{\"signal\":15,\"all\":false}}\n");
        let r: Reply = serde_json::from_str("{\"Error\":{\"message\":\"x\"}}").unwrap();
        assert_eq!(r, Reply::Error { message: "x".into() });
    }
}
