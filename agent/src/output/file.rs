//! The `file` sink: rotating line logs on local disk (`flows.log`, `audit.log`).
//!
//! Takes: lines (or flow records, encoded as the flow-log JSON). Gives: `<dir>/<name>`, rotated to
//! `<name>.1` ... `<name>.N` (newest first) before a write would pass the size limit; the oldest
//! file beyond N is deleted. Must never: split a line across files, reorder lines, or drop one
//! without an error.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::OutputError;
use crate::model::FlowRecord;

/// Rotation settings.
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// Directory of the log.
    pub dir: PathBuf,
    /// Rotate before the file would pass this many bytes.
    pub max_file_size: u64,
    /// Rotated files kept.
    pub max_files: u32,
}

/// A rotating log of lines: `<dir>/<name>`, then `<name>.1` ... `<name>.N`, newest first.
pub struct RotatingLog {
    cfg: FileConfig,
    name: String,
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
}

/// The rotating `flows.log` writer: records encoded as the flow-log JSON, one per line.
pub struct FlowLogWriter {
    log: RotatingLog,
    line: Vec<u8>,
}

/// Mode of the flow-log directory.
pub const DIR_MODE: u32 = 0o750;
/// Mode of every flow-log file.
pub const FILE_MODE: u32 = 0o640;

/// Name of the live flow-log file.
pub const FLOW_LOG: &str = "flows.log";

impl FlowLogWriter {
    /// Opens (appending) `<dir>/flows.log`; see [`RotatingLog::open`].
    pub fn open(cfg: FileConfig) -> Result<Self, OutputError> {
        Ok(Self { log: RotatingLog::open(cfg, FLOW_LOG)?, line: Vec::with_capacity(1024) })
    }

    /// Appends `records`, rotating as needed, and flushes. Returns the bytes written.
    pub fn write(&mut self, records: &[FlowRecord]) -> Result<u64, OutputError> {
        let mut written = 0;
        for record in records {
            self.line.clear();
            serde_json::to_writer(&mut self.line, record)?;
            written += self.log.append_line(&self.line)?;
        }
        self.log.flush()?;
        Ok(written)
    }
}

impl RotatingLog {
    /// Opens (appending) `<dir>/<name>`, creating the directory. The directory is made 0750 and
    /// every file 0640: logs name workloads and addresses, so only the owner and its group (the
    /// log shipper) read them.
    pub fn open(cfg: FileConfig, name: &str) -> Result<Self, OutputError> {
        let dir_error = |source| OutputError::Open { path: cfg.dir.clone(), source };
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&cfg.dir).map_err(dir_error)?;
        fs::set_permissions(&cfg.dir, fs::Permissions::from_mode(DIR_MODE)).map_err(dir_error)?;
        let path = cfg.dir.join(name);
        let (file, size) = open_append(&path)?;
        Ok(Self { cfg, name: name.to_owned(), path, file, size })
    }

    /// Appends one line (`line` without its newline), rotating first when it would pass the size
    /// limit; a line is never split across files. Returns the bytes written, newline included.
    /// Buffered: call [`RotatingLog::flush`] after a batch.
    pub fn append_line(&mut self, line: &[u8]) -> Result<u64, OutputError> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.cfg.max_file_size {
            self.rotate()?;
        }
        self.file
            .write_all(line)
            .and_then(|()| self.file.write_all(b"\n"))
            .map_err(|source| self.write_error(source))?;
        self.size += len;
        Ok(len)
    }

    /// Writes buffered lines to the file.
    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.file.flush().map_err(|source| self.write_error(source))
    }

    fn write_error(&self, source: io::Error) -> OutputError {
        OutputError::Write { path: self.path.clone(), source }
    }

    fn rotate(&mut self) -> Result<(), OutputError> {
        self.file.flush().map_err(|source| self.write_error(source))?;
        let numbered = |n: u32| self.cfg.dir.join(format!("{}.{n}", self.name));
        if self.cfg.max_files == 0 {
            fs::remove_file(&self.path).map_err(|source| self.write_error(source))?;
        } else {
            let oldest = numbered(self.cfg.max_files);
            if oldest.exists() {
                fs::remove_file(&oldest).map_err(|source| OutputError::Write { path: oldest.clone(), source })?;
            }
            for n in (1..self.cfg.max_files).rev() {
                let from = numbered(n);
                if from.exists() {
                    fs::rename(&from, numbered(n + 1)).map_err(|source| OutputError::Write { path: from, source })?;
                }
            }
            fs::rename(&self.path, numbered(1)).map_err(|source| self.write_error(source))?;
        }
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<(BufWriter<File>, u64), OutputError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| OutputError::Open { path: path.to_owned(), source })?;
    // A file left by an older version keeps its mode on open: set it.
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(|source| OutputError::Open { path: path.to_owned(), source })?;
    let size = file.metadata().map_err(|source| OutputError::Open { path: path.to_owned(), source })?.len();
    Ok((BufWriter::with_capacity(64 * 1024, file), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> FlowRecord {
        let mut r = FlowRecord::sample("10.0.0.1", 40000, "10.0.0.2", 80);
        r.id = format!("{n:016x}");
        r.bytes_in = n;
        r.bytes_out = 10 + n;
        r
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn writes_one_json_object_per_line_with_contract_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            FlowLogWriter::open(FileConfig { dir: dir.path().into(), max_file_size: 1 << 20, max_files: 2 }).unwrap();
        w.write(&[record(1), record(2)]).unwrap();
        let got = lines(&dir.path().join("flows.log"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["bytes_in"], 1);
        assert_eq!(got[1]["bytes_out"], 12);
        assert_eq!(got[0]["reporter"], "src");
        assert_eq!(got[0]["action"], "allow");
        assert_eq!(got[0]["policies"]["enforced_policies"], serde_json::json!([]));
        assert!(got[0].get("icmp_type").is_none());
        assert!(got[0].get("source_cgroup_id").is_none(), "absent when the cgroup hook did not see the source");
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&record(1)).unwrap().len() as u64 + 1;
        // Room for two records per file, three files kept.
        let mut w =
            FlowLogWriter::open(FileConfig { dir: dir.path().into(), max_file_size: 2 * one + 1, max_files: 3 })
                .unwrap();
        for n in 1..=9 {
            w.write(&[record(n)]).unwrap();
        }
        let ids = |name: &str| -> Vec<u64> {
            lines(&dir.path().join(name)).iter().map(|v| v["bytes_in"].as_u64().unwrap()).collect()
        };
        assert_eq!(ids("flows.log"), vec![9]);
        assert_eq!(ids("flows.log.1"), vec![7, 8]);
        assert_eq!(ids("flows.log.2"), vec![5, 6]);
        assert_eq!(ids("flows.log.3"), vec![3, 4]);
        assert!(!dir.path().join("flows.log.4").exists(), "oldest beyond max_files is deleted");
    }

    #[test]
    fn appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FileConfig { dir: dir.path().into(), max_file_size: 1 << 20, max_files: 2 };
        FlowLogWriter::open(cfg.clone()).unwrap().write(&[record(1)]).unwrap();
        FlowLogWriter::open(cfg).unwrap().write(&[record(2)]).unwrap();
        assert_eq!(lines(&dir.path().join("flows.log")).len(), 2);
    }

    #[test]
    fn directory_is_0750_and_files_0640_also_when_they_existed_wider() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("logs");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("flows.log"), b"").unwrap();
        fs::set_permissions(dir.join("flows.log"), fs::Permissions::from_mode(0o666)).unwrap();
        let one = serde_json::to_vec(&record(1)).unwrap().len() as u64 + 1;
        let mut w = FlowLogWriter::open(FileConfig { dir: dir.clone(), max_file_size: one + 1, max_files: 2 }).unwrap();
        w.write(&[record(1)]).unwrap();
        w.write(&[record(2)]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&dir.join("flows.log")), 0o640);
        assert_eq!(mode(&dir.join("flows.log.1")), 0o640, "the rotated file keeps the mode");
    }
}
