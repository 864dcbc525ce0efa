//! The frames of a streaming exec or attach connection, `[kind: u8][length: u32 BE][payload]`:
//! what the supervisor speaks after `Started`/`Attached` (`tug_shim::supervisor::protocol`),
//! and what the agent, the API server and `tug exec` relay unchanged.

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const CLOSE_STDIN: u8 = 3;
pub const RESIZE: u8 = 4;
pub const EXIT: u8 = 5;

/// One encoded frame.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Takes the first complete frame off the front of `buf`.
pub fn decode(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let kind = buf[0];
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Some((kind, payload))
}

/// A RESIZE payload.
pub fn resize(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_be_bytes().to_vec();
    p.extend_from_slice(&cols.to_be_bytes());
    p
}

/// Reads a RESIZE payload.
pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    Some((
        u16::from_be_bytes(p.get(0..2)?.try_into().ok()?),
        u16::from_be_bytes(p.get(2..4)?.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_whole_payload() {
        let mut buf = encode(STDOUT, b"hello");
        buf.extend(encode(RESIZE, &resize(24, 80)));
        let tail = buf.split_off(buf.len() - 2);
        assert_eq!(decode(&mut buf), Some((STDOUT, b"hello".to_vec())));
        assert_eq!(decode(&mut buf), None, "a partial frame waits");
        buf.extend(tail);
        let (kind, p) = decode(&mut buf).unwrap();
        assert_eq!((kind, parse_resize(&p)), (RESIZE, Some((24, 80))));
        assert!(buf.is_empty());
    }
}
