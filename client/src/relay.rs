//! Relaying a stream session (exec, attach) between a user's connection and the process
//! side (the agent's tunnel, the supervisor's socket), where the process side decides when
//! the session ends: everything it sent reaches the user, whatever happened to the user's
//! input meanwhile.
//!
//! `tokio::io::copy_bidirectional` returns on the first error in either direction, dropping
//! what the other still had in flight. That lost exit statuses: a command that ends before
//! the user's end-of-input arrives leaves the supervisor's socket closed, the late frame's
//! write fails with EPIPE, and the exit frame still queued behind it never reached the user.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copies `user` → `process` and `process` → `user` until the process side ends its output
/// (or the user can no longer be written to). The user's end of input is passed on as a
/// half-close; an error writing it to the process only stops that direction.
pub async fn relay<U, P>(user: &mut U, process: &mut P)
where
    U: AsyncRead + AsyncWrite + Unpin,
    P: AsyncRead + AsyncWrite + Unpin,
{
    let (mut user_rd, mut user_wr) = tokio::io::split(user);
    let (mut proc_rd, mut proc_wr) = tokio::io::split(process);
    let down = async {
        let _ = tokio::io::copy(&mut proc_rd, &mut user_wr).await;
        let _ = user_wr.shutdown().await;
    };
    let up = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match user_rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = proc_wr.shutdown().await;
                    break;
                }
                Ok(n) => {
                    if proc_wr.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        // The process side's output still decides the end.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_after_a_failed_input_write_still_arrives() {
        let (mut user, mut user_far) = tokio::io::duplex(64);
        let (mut process, process_far) = tokio::io::duplex(64);
        // The process side writes its last words and goes away at once.
        let mut process_far = process_far;
        process_far.write_all(b"exit 0").await.unwrap();
        drop(process_far);
        // The user's late input cannot be delivered; the output still is.
        user_far.write_all(b"late input").await.unwrap();
        relay(&mut user, &mut process).await;
        let mut got = Vec::new();
        user_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"exit 0");
    }
}
