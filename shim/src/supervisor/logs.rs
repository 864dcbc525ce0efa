//! Container logs in the CRI format the kubelet writes:
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>`, one record per line. A line
//! longer than the split size becomes `P` (partial) records and a final `F` record. Files
//! rotate by size: `LOG` → `LOG.1` → … → `LOG.(keep-1)`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The kubelet's defaults: rotate past 10 MiB (`containerLogMaxSize`), keep 5 files
/// (`containerLogMaxFiles`), split lines longer than 16 KiB (the CRI's line limit).
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_KEEP: usize = 5;
pub const DEFAULT_LINE_MAX: usize = 16 << 10;

/// The two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits incoming bytes into CRI records. Pure: returns `(partial, content)` pairs.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter { pending: Vec::new(), max: max.max(1) }
    }

    /// Feeds bytes; returns the complete records they finish.
    pub fn feed(&mut self, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                out.push((false, std::mem::take(&mut self.pending)));
            } else {
                self.pending.push(b);
                if self.pending.len() == self.max {
                    out.push((true, std::mem::take(&mut self.pending)));
                }
            }
        }
        out
    }

    /// At end of stream: what is left, as a final record.
    pub fn finish(&mut self) -> Option<(bool, Vec<u8>)> {
        (!self.pending.is_empty()).then(|| (false, std::mem::take(&mut self.pending)))
    }
}

/// One CRI record line.
pub fn record(time: SystemTime, stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut line = format!(
        "{} {} {} ",
        humantime::format_rfc3339_nanos(time),
        stream.name(),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// The log file, rotated by size.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: usize,
}

impl LogFile {
    /// Opens (appends to) `path`; rotates when it passes `max_size` bytes, keeping `keep` files
    /// in all.
    pub fn open(path: &Path, max_size: u64, keep: usize) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path: path.to_path_buf(), file, size, max_size: max_size.max(1), keep: keep.max(1) })
    }

    /// Appends one record, rotating first if it would pass the size limit.
    pub fn write_record(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 1 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep - 1));
            for n in (1..self.keep - 1).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_partial_and_final_records() {
        let mut s = LineSplitter::new(4);
        assert_eq!(
            s.feed(b"ab\ncdefghij"),
            vec![(false, b"ab".to_vec()), (true, b"cdef".to_vec()), (true, b"ghij".to_vec())]
        );
        assert_eq!(s.feed(b"k\n\n"), vec![(false, b"k".to_vec()), (false, Vec::new())]);
        assert_eq!(s.feed(b"tail"), vec![(true, b"tail".to_vec())]);
        assert_eq!(s.finish(), None);
        s.feed(b"xy");
        assert_eq!(s.finish(), Some((false, b"xy".to_vec())));
    }

    #[test]
    fn records_have_the_cri_shape() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_475_712_229_669_794_202);
        assert_eq!(
            record(t, Stream::Stdout, false, b"hello"),
            b"2016-10-06T00:03:49.669794202Z stdout F hello\n".to_vec()
        );
        assert_eq!(
            record(t, Stream::Stderr, true, b"x"),
            b"2016-10-06T00:03:49.669794202Z stderr P x\n".to_vec()
        );
    }

    #[test]
    fn files_rotate_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut f = LogFile::open(&path, 10, 3).unwrap();
        for i in 0..5 {
            f.write_record(format!("line-{i}\n").as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line-4\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("c.log.1")).unwrap(), "line-3\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("c.log.2")).unwrap(), "line-2\n");
        assert!(!dir.path().join("c.log.3").exists());
    }
}
