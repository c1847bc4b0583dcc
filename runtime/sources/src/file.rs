//! NDJSON files and stdin: one record per line, one partition, the
//! offset of a record is its line number (from 0). Blank lines are not
//! records but keep their number, so offsets match what an editor shows.

use projector_common::sync::Recover;
use projector_core::source::{Batch, Next, Source, SourceHost};
use projector_core::Record;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The source id under which a file's offsets are stored.
pub(crate) fn file_source_id(path: &Path) -> String {
    if path.as_os_str() == "-" {
        return "stdin".into();
    }
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file:{}", full.display())
}

/// A file (or stdin) as a [`Source`]: read once to its end, from the
/// line after the last one the engine stored.
pub struct FileSource {
    id: String,
    lines: Mutex<(LineSource, u64)>,
}

impl FileSource {
    /// Open `path`, or stdin when it is `-`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let lines =
            LineSource::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(FileSource {
            id: file_source_id(path),
            lines: Mutex::new((lines, 0)),
        })
    }
}

impl Source for FileSource {
    fn start(&self, host: Arc<dyn SourceHost>) -> anyhow::Result<()> {
        let from = host.resume_offset(&self.id, 0)?;
        self.lines.lock().recover().1 = from;
        Ok(())
    }

    fn next_batch(&self, max: usize, _wait: Duration) -> anyhow::Result<Next> {
        let mut lines = self.lines.lock().recover();
        let (input, from) = &mut *lines;
        let records = input.next_batch(*from, max)?;
        if records.is_empty() {
            return Ok(Next::End);
        }
        Ok(Next::Batch(Batch {
            source: self.id.clone(),
            partition: 0,
            records,
            retries: Vec::new(),
        }))
    }

    fn positions(&self) -> Vec<(String, Vec<(u32, u64)>)> {
        Vec::new()
    }

    fn bytes_read(&self) -> (u64, Option<u64>) {
        let lines = self.lines.lock().recover();
        (lines.0.bytes_read(), lines.0.size)
    }
}

/// Lines of a file or stdin as records.
pub(crate) struct LineSource {
    reader: Box<dyn BufRead + Send>,
    line: u64,
    bytes_read: u64,
    /// Total size, when known (files, not stdin).
    pub(crate) size: Option<u64>,
}

impl LineSource {
    /// Open `path`, or stdin when it is `-`.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let (reader, size): (Box<dyn Read + Send>, _) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdin()), None)
        } else {
            let f = File::open(path)?;
            let size = f.metadata()?.len();
            (Box::new(f), Some(size))
        };
        Ok(LineSource {
            reader: Box::new(BufReader::with_capacity(1 << 20, reader)),
            line: 0,
            bytes_read: 0,
            size,
        })
    }

    /// Bytes read from the input so far, skipped lines included.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next up to `max` records; empty at the end of input. Lines
    /// before `from` are read past without being returned.
    pub(crate) fn next_batch(&mut self, from: u64, max: usize) -> std::io::Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while out.len() < max {
            buf.clear();
            let n = self.reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            self.bytes_read += n as u64;
            let offset = self.line;
            self.line += 1;
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            if offset < from || buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push(Record::wire(0, offset, None, std::mem::take(&mut buf)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;

    fn offsets(next: Next) -> Vec<u64> {
        match next {
            Next::Batch(b) => b.records.iter().map(|r| r.offset).collect(),
            Next::Idle | Next::End => Vec::new(),
        }
    }

    #[test]
    fn a_file_resumes_at_the_line_its_host_stored_and_keeps_line_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, "{\"n\":0}\n{\"n\":1}\n\n{\"n\":3}\n{\"n\":4}\n").expect("write");
        let source = FileSource::open(&path).expect("open");
        let host = FakeHost::new(&["p"], &[(&file_source_id(&path), 0, 1)]);
        source.start(host).expect("start");
        let first = source.next_batch(2, Duration::ZERO).expect("batch");
        assert_eq!(offsets(first), [1, 3], "line 0 is stored, line 2 is blank");
        let rest = source.next_batch(10, Duration::ZERO).expect("batch");
        assert_eq!(offsets(rest), [4]);
        assert!(matches!(
            source.next_batch(10, Duration::ZERO).expect("end"),
            Next::End
        ));
        let (read, size) = source.bytes_read();
        assert_eq!(Some(read), size, "the whole file is read");
    }
}
