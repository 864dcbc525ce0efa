//! SPDY/3.1 framing, the part Kubernetes' port forwarding uses (kubectl speaks it inside a
//! WebSocket, `SPDY/3.1+portforward.k8s.io`, or on a connection upgraded to `SPDY/3.1`):
//! SYN_STREAM/SYN_REPLY with zlib-compressed header blocks, DATA with FIN, RST_STREAM, PING,
//! WINDOW_UPDATE, GOAWAY. Header blocks from the client inflate with the spec's dictionary
//! (one zlib stream per direction); ours are written as stored deflate blocks, which need no
//! dictionary. Pure but for the async reads.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 1;
/// The largest frame payload accepted (SPDY's length field is 24 bits).
const MAX_FRAME: usize = 1 << 24;

/// The header compression dictionary of SPDY/3 (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// length-prefixed header names and values, then a run of common text.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut out = Vec::with_capacity(1423);
    for w in WORDS {
        out.extend_from_slice(&u32::try_from(w.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(w.as_bytes());
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// One frame as read.
#[derive(Debug, PartialEq)]
pub enum Frame {
    SynStream {
        id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    Data {
        id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    RstStream {
        id: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS and anything else: nothing to do.
    Other,
}

/// Reads frames, inflating header blocks with the connection's zlib stream.
pub struct Reader<R> {
    r: R,
    inflate: flate2::Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R) -> Reader<R> {
        Reader { r, inflate: flate2::Decompress::new(true) }
    }

    /// The next frame; `None` at the end of the connection.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        if len > MAX_FRAME {
            return Err(std::io::Error::other("a SPDY frame longer than 16 MiB"));
        }
        let mut payload = vec![0u8; len];
        self.r.read_exact(&mut payload).await?;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { id, flags, data: payload }));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let id =
            || payload.get(0..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
        Ok(Some(match kind {
            SYN_STREAM => {
                let block = payload.get(10..).unwrap_or_default();
                let headers = self.headers(block)?;
                Frame::SynStream { id: id(), flags, headers }
            }
            HEADERS => {
                // Read, so the zlib stream stays in step; nothing in them matters here.
                let block = payload.get(4..).unwrap_or_default();
                self.headers(block)?;
                Frame::Other
            }
            RST_STREAM => Frame::RstStream { id: id() },
            PING => Frame::Ping {
                id: payload.get(0..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            },
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        }))
    }

    fn headers(&mut self, block: &[u8]) -> std::io::Result<Vec<(String, String)>> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            raw.reserve(4096);
            let before_in = self.inflate.total_in();
            let r = self.inflate.decompress_vec(input, &mut raw, flate2::FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before_in).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            match r {
                Ok(_) if input.is_empty() => break,
                Ok(_) => continue,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&dictionary()).map_err(std::io::Error::other)?;
                }
                Err(e) => return Err(std::io::Error::other(format!("a SPDY header block: {e}"))),
            }
        }
        parse_block(&raw).ok_or_else(|| std::io::Error::other("a malformed SPDY header block"))
    }
}

fn parse_block(raw: &[u8]) -> Option<Vec<(String, String)>> {
    let mut at = 0;
    let mut take = |n: usize| {
        let s = raw.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..count.min(1024) {
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    Some(out)
}

/// Writes frames; header blocks go out as stored deflate blocks of one zlib stream.
#[derive(Default)]
pub struct Writer {
    started: bool,
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&[0x80, 0x03]);
    out.extend_from_slice(&kind.to_be_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(0);
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    out
}

impl Writer {
    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&u32::try_from(headers.len()).unwrap_or(0).to_be_bytes());
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::new();
        if !self.started {
            // zlib: deflate, 32 KiB window, no preset dictionary; 0x7801 % 31 == 0.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in raw.chunks(0xffff) {
            let n = u16::try_from(chunk.len()).unwrap_or(0);
            out.push(0x00);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(!n).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // An empty stored block, as a sync flush ends a block: Go's inflater hands out what it
        // holds when it reaches one, instead of reading past the frame for the next block
        // (which fails, and fails every later frame with it).
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }

    pub fn syn_reply(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) -> Vec<u8> {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend(self.block(headers));
        control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &payload)
    }
}

pub fn data(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    out.push(if fin { FLAG_FIN } else { 0 });
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes()[1..]);
    out.extend_from_slice(data);
    out
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

pub fn rst_stream(id: u32, status: u32) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &p)
}

pub fn window_update(id: u32, delta: u32) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&delta.to_be_bytes());
    control(WINDOW_UPDATE, 0, &p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    /// A client's SYN_STREAM, compressed with the dictionary as Go's zlib writer does.
    fn client_syn(id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = u32::try_from(headers.len()).unwrap().to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut z = flate2::Compress::new(flate2::Compression::default(), true);
        z.set_dictionary(&dictionary()).unwrap();
        let mut block = Vec::with_capacity(raw.len() + 128);
        z.compress_vec(&raw, &mut block, flate2::FlushCompress::Sync).unwrap();
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend(block);
        control(SYN_STREAM, 0, &payload)
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut wire = client_syn(1, &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]);
        wire.extend(data(1, b"hello", true));
        wire.extend(ping(7));
        let mut r = Reader::new(&wire[..]);
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::SynStream {
                id: 1,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into())
                ]
            })
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::Data { id: 1, flags: FLAG_FIN, data: b"hello".to_vec() })
        );
        assert_eq!(r.next().await.unwrap(), Some(Frame::Ping { id: 7 }));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[test]
    fn our_header_blocks_inflate_without_a_dictionary() {
        let mut w = Writer::default();
        let frame = w.syn_reply(3, &[("streamtype", "error")], false);
        let second = w.syn_reply(5, &[("a", "b")], false);
        let mut z = flate2::write::ZlibDecoder::new(Vec::new());
        z.write_all(&frame[12..]).unwrap();
        z.write_all(&second[12..]).unwrap();
        z.flush().unwrap();
        let raw = z.get_ref().clone();
        assert_eq!(parse_block(&raw).unwrap(), vec![("streamtype".to_string(), "error".to_string())]);
    }
}
