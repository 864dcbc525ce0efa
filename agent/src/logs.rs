//! Reading containers' logs back for `tug logs`: the supervisor writes CRI records
//! (`TIME STREAM P|F CONTENT`, see `tug_shim::supervisor::logs`), rotated by size
//! (`N.log` → `N.log.1` → …); this turns them into the text the container wrote, as kubelet
//! does for `kubectl logs`. [`Renderer`] and [`tail`] are pure.

use std::path::{Path, PathBuf};

/// Turns CRI records into the container's text, one record at a time.
#[derive(Debug, Default)]
pub struct Renderer {
    pub timestamps: bool,
    /// Records written before this are left out (`sinceSeconds`, `sinceTime`).
    pub since: Option<std::time::SystemTime>,
    /// The last record was partial (`P`): the next one continues its line.
    in_line: bool,
    /// The line being continued is left out.
    skipping: bool,
}

impl Renderer {
    pub fn new(timestamps: bool) -> Renderer {
        Renderer { timestamps, since: None, in_line: false, skipping: false }
    }

    /// Renders the complete records (lines ending in `\n`) at the front of `data`; returns
    /// the text and how many bytes it used (the rest is an unfinished record).
    pub fn feed(&mut self, data: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut used = 0;
        while let Some(nl) = data[used..].iter().position(|b| *b == b'\n') {
            let line = &data[used..used + nl];
            used += nl + 1;
            // TIME STREAM TAG CONTENT; a line that is not a record is passed on as it is.
            let mut parts = line.splitn(4, |b| *b == b' ');
            let (Some(time), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                out.extend_from_slice(line);
                out.push(b'\n');
                continue;
            };
            let content = parts.next().unwrap_or_default();
            if !self.in_line {
                // A line's first record decides: written before `since`, the whole line goes.
                self.skipping = self.since.is_some_and(|since| {
                    std::str::from_utf8(time)
                        .ok()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                        .is_some_and(|t| t < since)
                });
            }
            if self.skipping {
                self.in_line = tag == b"P";
                continue;
            }
            if self.timestamps && !self.in_line {
                out.extend_from_slice(time);
                out.push(b' ');
            }
            out.extend_from_slice(content);
            self.in_line = tag == b"P";
            if !self.in_line {
                out.push(b'\n');
            }
        }
        (out, used)
    }
}

#[cfg(test)]
mod since_tests {
    use super::*;

    #[test]
    fn lines_before_since_are_left_out_whole() {
        let log = b"2026-01-01T00:00:01.5Z stdout P par\n2026-01-01T00:00:03Z stdout F t\n2026-01-01T00:00:04Z stdout F new\n";
        let mut r = Renderer::new(false);
        r.since = humantime::parse_rfc3339_weak("2026-01-01T00:00:02Z").ok();
        assert_eq!(r.feed(log).0, b"new\n");
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &[u8], n: u64) -> &[u8] {
    if n == 0 {
        return &[];
    }
    // Lines end in '\n'; a final unterminated piece counts as a line.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// The files of one container instance's log, oldest first: the rotated `LOG.N` … `LOG.1`,
/// then `LOG`.
pub fn files(log: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for n in 1.. {
        let p = PathBuf::from(format!("{}.{n}", log.display()));
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    rotated.reverse();
    rotated.push(log.to_path_buf());
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2026-11-26T10:00:00.000000001Z stdout F hello\n\
2026-11-26T10:00:01.000000001Z stderr P par\n\
2026-11-26T10:00:02.000000001Z stderr F tial\n\
2026-11-26T10:00:03.000000001Z stdout F \n\
2026-11-26T10:00:04.000000001Z stdout F unfin";

    #[test]
    fn records_become_the_text_with_partials_joined() {
        let (out, used) = Renderer::new(false).feed(LOG);
        assert_eq!(String::from_utf8(out).unwrap(), "hello\npartial\n\n");
        assert_eq!(
            &LOG[used..],
            b"2026-11-26T10:00:04.000000001Z stdout F unfin",
            "the unfinished record waits"
        );
    }

    #[test]
    fn timestamps_start_each_line_once() {
        let (out, _) = Renderer::new(true).feed(LOG);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-26T10:00:00.000000001Z hello\n2026-11-26T10:00:01.000000001Z partial\n\
             2026-11-26T10:00:03.000000001Z \n"
        );
    }

    #[test]
    fn a_partial_line_continues_across_feeds() {
        let mut r = Renderer::new(true);
        let (a, _) = r.feed(b"T1 stdout P ab\n");
        let (b, _) = r.feed(b"T2 stdout F cd\n");
        assert_eq!([a, b].concat(), b"T1 abcd\n");
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
        assert_eq!(tail(b"", 3), b"");
    }
}
