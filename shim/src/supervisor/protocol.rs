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
//!
//!   Exec { process } ─────────────────────► spawns it in the container
//!                        ◄───────────────── Started { pid }      ┐ the connection now
//!   Attach { stdin } ─────────────────────►                      │ carries frames, not
//!                        ◄───────────────── Attached             ┘ lines (below)
//! ```
//!
//! After `Started` or `Attached` the connection is a stream of frames, each
//! `[kind: u8][length: u32 big-endian][payload]`:
//!
//! ```text
//!   client → supervisor                     supervisor → client
//!   STDIN  (0) bytes for the process        STDOUT (1) bytes it wrote (or the terminal's)
//!   CLOSE_STDIN (3) end of input            STDERR (2) bytes it wrote to stderr
//!   RESIZE (4) rows: u16, cols: u16 (BE)    EXIT   (5) JSON ExitStatus, then the supervisor
//!                                                      closes the connection
//! ```
//!
//! An exec'd process's output goes only to its client; the container's own output goes to the
//! log and to every attached client. A client that stops reading for long is cut off, never
//! waited for: the supervisor keeps one thread.

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
    /// Run a process in the container (an OCI `process` object; `terminal: true` for a tty).
    Exec {
        process: serde_json::Value,
    },
    /// Follow the container's own stdio; with `stdin`, write to it too (the container must
    /// have been started with its stdin open).
    Attach {
        stdin: bool,
    },
    /// The size of the container's own terminal.
    Resize {
        rows: u16,
        cols: u16,
    },
}

/// Frame kinds and their encoding: the vocabulary the agent, the API server and `tug exec`
/// share, so it lives in `tug-api`.
pub use tug_api::frame;

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
    /// Usage less the inactive page cache the kernel can take back at once: what
    /// `kubectl top` shows and the OOM killer weighs (absent from older supervisors).
    #[serde(default)]
    pub memory_working_set_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
}

/// Supervisor → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        version: u32,
        id: String,
        pid: i32,
    },
    State {
        status: String,
        pid: i32,
        started_at: String,
        exit: Option<ExitStatus>,
    },
    Exited(ExitStatus),
    Stats(Stats),
    Ok,
    Error {
        message: String,
    },
    /// An exec'd process runs; frames follow.
    Started {
        pid: i32,
    },
    /// Attached to the container's stdio; frames follow.
    Attached,
}

/// What arrives on a streaming connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
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

/// A whole stream's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExitStatus>,
}

/// The client's side of a streaming connection (after `Started` or `Attached`).
pub struct Stream {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl Client {
    /// Starts a process in the container; returns its pid and the stream of its stdio.
    pub fn exec(mut self, process: serde_json::Value) -> Result<(i32, Stream), ClientError> {
        match self.call(&Request::Exec { process })? {
            Reply::Started { pid } => Ok((pid, self.into_stream())),
            other => Err(ClientError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    /// Attaches to the container's own stdio.
    pub fn attach(mut self, stdin: bool) -> Result<Stream, ClientError> {
        match self.call(&Request::Attach { stdin })? {
            Reply::Attached => Ok(self.into_stream()),
            other => Err(ClientError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    fn into_stream(self) -> Stream {
        Stream { writer: self.writer, reader: self.reader, buf: Vec::new() }
    }
}

impl Stream {
    /// The socket itself and the bytes already read off it but not yet decoded, for a caller
    /// that relays the frames elsewhere (the agent's exec tunnel) instead of decoding them.
    pub fn into_parts(self) -> (UnixStream, Vec<u8>) {
        let mut pending = self.buf;
        pending.extend_from_slice(self.reader.buffer());
        (self.writer, pending)
    }

    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        Ok(self.writer.write_all(&frame::encode(frame::STDIN, data))?)
    }

    pub fn close_stdin(&mut self) -> Result<(), ClientError> {
        Ok(self.writer.write_all(&frame::encode(frame::CLOSE_STDIN, &[]))?)
    }

    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        Ok(self.writer.write_all(&frame::encode(frame::RESIZE, &frame::resize(rows, cols)))?)
    }

    /// Bounds how long [`Stream::next_output`] waits.
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) {
        let _ = self.writer.set_read_timeout(timeout);
    }

    /// The next piece of output; `Ok(None)` once the supervisor closed the stream.
    pub fn next_output(&mut self) -> Result<Option<Output>, ClientError> {
        use std::io::Read;
        loop {
            if let Some((kind, payload)) = frame::decode(&mut self.buf) {
                return Ok(Some(match kind {
                    frame::STDOUT => Output::Stdout(payload),
                    frame::STDERR => Output::Stderr(payload),
                    frame::EXIT => Output::Exit(serde_json::from_slice(&payload)?),
                    k => return Err(ClientError::Refused(format!("unknown frame kind {k}"))),
                }));
            }
            let mut chunk = [0u8; 8192];
            let n = self.reader.read(&mut chunk)?;
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ClientError::Closed) };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads to the end: everything written to stdout and stderr, and the exit status.
    pub fn collect(&mut self) -> Result<Collected, ClientError> {
        let mut all = Collected::default();
        while let Some(o) = self.next_output()? {
            match o {
                Output::Stdout(d) => all.stdout.extend(d),
                Output::Stderr(d) => all.stderr.extend(d),
                Output::Exit(s) => all.exit = Some(s),
            }
        }
        Ok(all)
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
