//! The `file` sink: rotating line logs on local disk (`flows.log`, `audit.log`), hash-chained
//! and kept within their retention.
//!
//! Takes: lines (or flow records, encoded as the flow-log JSON). Gives: `<dir>/<name>`, rotated to
//! `<name>.1` ... `<name>.N` (newest first) before a write would pass the size limit; the oldest
//! file beyond N is deleted, and so are the oldest rotated files past the [`Retention`] age or
//! total size. Every flushed block gets a chain line in `<dir>/chain/<file>.chain`, every
//! rotation and removal a record in `<dir>/chain-heads.log` ([`super::chain`],
//! `docs/evidence.md`). Must never: split a line across files, reorder lines, drop one without an
//! error, delete the live file for retention, or delete a file without recording it.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};

use super::{
    OutputError,
    chain::{
        self, CHAIN_DIR, ChainLine, GENESIS, HeadRecord, HmacKey, block_hasher, chain_path, finish, hash_from_hex, hex,
    },
};
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

/// How long and how much of one log type is kept. `None`: no limit of that kind (`max_files`
/// still applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// A rotated file whose last write is older than this is deleted.
    pub max_age: Option<Duration>,
    /// The oldest rotated files are deleted while the log's files (live one included) hold more
    /// bytes than this.
    pub max_total_size: Option<u64>,
}

/// Tamper-evidence and retention settings of one log.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// Retention of this log type.
    pub retention: Retention,
    /// Signs the records of `chain-heads.log` (HMAC-SHA256) when set.
    pub hmac_key: Option<HmacKey>,
}

/// What the log did about its evidence since the last [`RotatingLog::take_events`]: for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvidenceEvents {
    /// Rotated files deleted (by `max_files` or retention).
    pub removed_files: u64,
    /// Bytes of those files.
    pub removed_bytes: u64,
    /// Files found inconsistent with their chain at open (truncated, chain missing or unreadable).
    pub chain_breaks: u64,
    /// Blocks found written without their chain line at open (a crash), chained then.
    pub recovered_blocks: u64,
}

/// How often retention is checked and the live head published, besides open and rotation.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(3600);

/// A rotating log of lines: `<dir>/<name>`, then `<name>.1` ... `<name>.N`, newest first.
pub struct RotatingLog {
    cfg: FileConfig,
    name: String,
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    evidence: Evidence,
    chain: ChainState,
    events: EvidenceEvents,
    housekeeping: Instant,
}

/// The live file's chain: where it ends and the block being written.
struct ChainState {
    path: PathBuf,
    file: File,
    /// `seq` of the last chain line (0: none yet in this log).
    seq: u64,
    /// `hash` of the last chain line.
    head: [u8; 32],
    /// First `seq` of the live file (0: it has no chain line yet).
    first_seq: u64,
    /// Line number of the live file's next line.
    next_line: u64,
    /// Last `seq` published to `chain-heads.log`.
    published: u64,
    block: Option<Block>,
}

/// Bytes appended since the last chain line.
struct Block {
    hasher: Sha256,
    offset: u64,
    first_line: u64,
    lines: u64,
    bytes: u64,
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
        Self::open_with(cfg, Evidence::default())
    }

    /// Opens (appending) `<dir>/flows.log` with retention and signing; see [`RotatingLog::open_with`].
    pub fn open_with(cfg: FileConfig, evidence: Evidence) -> Result<Self, OutputError> {
        Ok(Self { log: RotatingLog::open_with(cfg, FLOW_LOG, evidence)?, line: Vec::with_capacity(1024) })
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

    /// See [`RotatingLog::take_events`].
    pub fn take_events(&mut self) -> EvidenceEvents {
        self.log.take_events()
    }
}

impl RotatingLog {
    /// Opens (appending) `<dir>/<name>` with a hash chain, no signing and no retention beyond
    /// `max_files`; see [`RotatingLog::open_with`].
    pub fn open(cfg: FileConfig, name: &str) -> Result<Self, OutputError> {
        Self::open_with(cfg, name, Evidence::default())
    }

    /// Opens (appending) `<dir>/<name>`, creating the directory. The directory is made 0750 and
    /// every file 0640: logs name workloads and addresses, so only the owner and its group (the
    /// log shipper) read them.
    ///
    /// The chain continues from the live file's chain sidecar (else the newest rotated file's,
    /// else the last head published for this log). Bytes of the file that the chain does not
    /// cover (a crash between the data write and the chain write) are chained as a `recovered`
    /// block; a file shorter than its chain claims, or a missing or unreadable chain, is a
    /// `break`: logged as a warning, counted, recorded in the chain and in `chain-heads.log`, and
    /// a new segment starts. Retention is then enforced.
    pub fn open_with(cfg: FileConfig, name: &str, evidence: Evidence) -> Result<Self, OutputError> {
        let dir_error = |source| OutputError::Open { path: cfg.dir.clone(), source };
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&cfg.dir).map_err(dir_error)?;
        fs::set_permissions(&cfg.dir, fs::Permissions::from_mode(DIR_MODE)).map_err(dir_error)?;
        let chain_dir = cfg.dir.join(CHAIN_DIR);
        let chain_dir_error = |source| OutputError::Open { path: chain_dir.clone(), source };
        fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(&chain_dir).map_err(chain_dir_error)?;
        fs::set_permissions(&chain_dir, fs::Permissions::from_mode(DIR_MODE)).map_err(chain_dir_error)?;
        repair_interrupted_rotation(&cfg.dir, name, cfg.max_files)?;
        let path = cfg.dir.join(name);
        let (file, size) = open_append(&path)?;
        let (chain, found) = ChainState::open(&cfg.dir, name)?;
        let mut log = Self {
            cfg,
            name: name.to_owned(),
            path,
            file,
            size,
            evidence,
            chain,
            events: EvidenceEvents::default(),
            housekeeping: Instant::now(),
        };
        log.reconcile(found)?;
        log.retention_or_warn();
        Ok(log)
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
        let (size, next_line) = (self.size, self.chain.next_line);
        let block = self.chain.block.get_or_insert_with(|| Block {
            hasher: block_hasher(&self.chain.head),
            offset: size,
            first_line: next_line,
            lines: 0,
            bytes: 0,
        });
        block.hasher.update(line);
        block.hasher.update(b"\n");
        block.lines += 1;
        block.bytes += len;
        self.size += len;
        Ok(len)
    }

    /// Writes buffered lines to the file, then their chain line (one per flush). Once an hour
    /// also enforces retention and publishes the live file's head (`checkpoint`).
    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.file.flush().map_err(|source| self.write_error(source))?;
        self.seal()?;
        if self.housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            self.housekeeping = Instant::now();
            self.retention_or_warn();
            if let Err(error) = self.checkpoint() {
                tracing::warn!(message = "Publishing the log's chain head failed.", file = %self.path.display(), %error);
            }
        }
        Ok(())
    }

    /// Removal and chain counts since the last call.
    pub fn take_events(&mut self) -> EvidenceEvents {
        std::mem::take(&mut self.events)
    }

    /// Deletes the oldest rotated files (never the live one) while the oldest is older than
    /// `max_age` or the log holds more than `max_total_size`, recording each removal in
    /// `chain-heads.log`. Runs at open, after each rotation and hourly from [`RotatingLog::flush`].
    pub fn enforce_retention(&mut self) -> Result<(), OutputError> {
        let Retention { max_age, max_total_size } = self.evidence.retention;
        if max_age.is_none() && max_total_size.is_none() {
            return Ok(());
        }
        let mut rotated = Vec::new();
        for n in rotated_numbers(&self.cfg.dir, &self.name) {
            let path = self.numbered(n);
            let meta = fs::metadata(&path).map_err(|source| OutputError::Write { path: path.clone(), source })?;
            rotated.push((n, meta.len(), meta.modified().unwrap_or(SystemTime::now())));
        }
        // Oldest (highest number) first.
        rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut total = self.size + rotated.iter().map(|r| r.1).sum::<u64>();
        let now = SystemTime::now();
        for (n, len, modified) in rotated {
            let too_old = max_age.is_some_and(|age| now.duration_since(modified).is_ok_and(|d| d > age));
            let too_big = max_total_size.is_some_and(|max| total > max);
            if !too_old && !too_big {
                break;
            }
            let reason = if too_old { "max_age" } else { "max_total_size" };
            self.remove_file(&format!("{}.{n}", self.name), reason)?;
            total -= len;
        }
        Ok(())
    }

    /// Publishes the live file's head to `chain-heads.log` (event `checkpoint`) if it moved
    /// since the last publication.
    pub fn checkpoint(&mut self) -> Result<(), OutputError> {
        if self.chain.seq == self.chain.published || self.chain.first_seq == 0 {
            return Ok(());
        }
        self.publish("checkpoint", self.name.clone(), self.chain.first_seq, self.size, None)
    }

    fn numbered(&self, n: u32) -> PathBuf {
        self.cfg.dir.join(format!("{}.{n}", self.name))
    }

    fn write_error(&self, source: io::Error) -> OutputError {
        OutputError::Write { path: self.path.clone(), source }
    }

    fn publish(
        &mut self,
        event: &str,
        file: String,
        first_seq: u64,
        bytes: u64,
        reason: Option<String>,
    ) -> Result<(), OutputError> {
        let record = HeadRecord {
            log: self.name.clone(),
            event: event.to_owned(),
            file,
            first_seq,
            last_seq: self.chain.seq,
            head: hex(&self.chain.head),
            bytes,
            time: chain::now_rfc3339(),
            reason,
            sig: None,
        };
        chain::publish(&self.cfg.dir, record, self.evidence.hmac_key.as_ref())?;
        self.chain.published = self.chain.seq;
        Ok(())
    }

    /// Writes the chain line of the bytes flushed since the last one. The data must be flushed.
    fn seal(&mut self) -> Result<(), OutputError> {
        let Some(block) = &self.chain.block else { return Ok(()) };
        let line = ChainLine {
            seq: self.chain.seq + 1,
            offset: block.offset,
            first_line: block.first_line,
            lines: block.lines,
            bytes: block.bytes,
            prev: hex(&self.chain.head),
            hash: hex(&finish(block.hasher.clone())),
            recovered: false,
            break_reason: None,
        };
        self.chain.append(line)?;
        self.chain.block = None;
        Ok(())
    }

    /// Brings the chain in line with the file found at open (see [`RotatingLog::open_with`]).
    fn reconcile(&mut self, found: Found) -> Result<(), OutputError> {
        let covered = found.covered;
        let (reason, resume) = if let Some((n, _)) = found.bad_lines.first() {
            (Some(format!("chain line {n} is unreadable")), covered.min(self.size))
        } else if !found.existed && self.size > 0 {
            (Some(format!("no chain for the {} bytes in the file", self.size)), 0)
        } else if covered > self.size {
            (Some(format!("the chain covers {covered} bytes, the file holds {}", self.size)), self.size)
        } else {
            (None, covered)
        };
        if let Some(reason) = reason {
            tracing::warn!(
                message = "Log file inconsistent with its hash chain: truncated or changed; a new chain segment starts.",
                file = %self.path.display(),
                reason = %reason,
            );
            let newlines = chain::hash_range(&self.path, &GENESIS, 0, resume)
                .map_err(|source| self.write_error(source))?
                .map_or(0, |(_, n)| n);
            let line = ChainLine {
                seq: self.chain.seq + 1,
                offset: resume,
                first_line: newlines + 1,
                lines: 0,
                bytes: 0,
                prev: hex(&self.chain.head),
                hash: hex(&finish(block_hasher(&self.chain.head))),
                recovered: false,
                break_reason: Some(reason.clone()),
            };
            self.chain.append(line)?;
            self.events.chain_breaks += 1;
            self.publish("break", self.name.clone(), self.chain.first_seq, self.size, Some(reason))?;
        }
        if self.size > resume {
            if !chain::ends_with_newline(&self.path, self.size).map_err(|source| self.write_error(source))? {
                // A partial last line: end it, so the next line does not glue onto it.
                self.file
                    .write_all(b"\n")
                    .and_then(|()| self.file.flush())
                    .map_err(|source| self.write_error(source))?;
                self.size += 1;
            }
            let (hash, lines) = chain::hash_range(&self.path, &self.chain.head, resume, self.size - resume)
                .map_err(|source| self.write_error(source))?
                .expect("the file holds its own size");
            let line = ChainLine {
                seq: self.chain.seq + 1,
                offset: resume,
                first_line: self.chain.next_line,
                lines,
                bytes: self.size - resume,
                prev: hex(&self.chain.head),
                hash: hex(&hash),
                recovered: true,
                break_reason: None,
            };
            tracing::warn!(
                message = "Log lines without a chain line found at open (a crash between the two writes); chained as recovered.",
                file = %self.path.display(),
                offset = resume,
                bytes = self.size - resume,
            );
            self.chain.append(line)?;
            self.events.recovered_blocks += 1;
        }
        Ok(())
    }

    /// Deletes the rotated file `file` (and its chain), recording it in `chain-heads.log` first.
    fn remove_file(&mut self, file: &str, reason: &str) -> Result<(), OutputError> {
        let path = self.cfg.dir.join(file);
        let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let cpath = chain_path(&self.cfg.dir, file);
        let lines = chain::read_chain(&cpath).ok().flatten().map(|(l, _)| l).unwrap_or_default();
        let record = HeadRecord {
            log: self.name.clone(),
            event: "removed".to_owned(),
            file: file.to_owned(),
            first_seq: lines.first().map_or(0, |l| l.seq),
            last_seq: lines.last().map_or(0, |l| l.seq),
            head: lines.last().map(|l| l.hash.clone()).unwrap_or_default(),
            bytes,
            time: chain::now_rfc3339(),
            reason: Some(reason.to_owned()),
            sig: None,
        };
        chain::publish(&self.cfg.dir, record, self.evidence.hmac_key.as_ref())?;
        fs::remove_file(&path).map_err(|source| OutputError::Write { path: path.clone(), source })?;
        match fs::remove_file(&cpath) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(OutputError::Write { path: cpath, source: e });
            }
            _ => {}
        }
        tracing::info!(message = "Log file removed.", file = %path.display(), reason, bytes);
        self.events.removed_files += 1;
        self.events.removed_bytes += bytes;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), OutputError> {
        self.file.flush().map_err(|source| self.write_error(source))?;
        self.seal()?;
        let dir = self.cfg.dir.clone();
        if self.cfg.max_files == 0 {
            let name = self.name.clone();
            self.remove_file(&name, "max_files")?;
        } else {
            let first = format!("{}.1", self.name);
            self.publish("rotated", first, self.chain.first_seq, self.size, None)?;
            let oldest = format!("{}.{}", self.name, self.cfg.max_files);
            if dir.join(&oldest).exists() {
                self.remove_file(&oldest, "max_files")?;
            }
            for n in (1..self.cfg.max_files).rev() {
                rename_pair(&dir, &format!("{}.{n}", self.name), &format!("{}.{}", self.name, n + 1))?;
            }
            rename_pair(&dir, &self.name, &format!("{}.1", self.name))?;
        }
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        self.chain.file = chain::open_append_raw(&self.chain.path)?;
        self.chain.first_seq = 0;
        self.chain.next_line = 1;
        self.retention_or_warn();
        Ok(())
    }

    /// Retention as part of another operation: a failure to delete must not fail a write.
    fn retention_or_warn(&mut self) {
        if let Err(error) = self.enforce_retention() {
            tracing::warn!(message = "Enforcing log retention failed; retrying at the next check.", file = %self.path.display(), %error);
        }
    }
}

impl Drop for RotatingLog {
    /// A clean stop chains what was buffered and publishes the live head (`checkpoint`), so the
    /// newest blocks are anchored too. Errors are ignored here: the next open recovers.
    fn drop(&mut self) {
        if self.file.flush().is_ok() && self.seal().is_ok() {
            let _ = self.checkpoint();
        }
    }
}

/// What [`ChainState::open`] found, for [`RotatingLog::reconcile`].
struct Found {
    /// The live chain sidecar existed.
    existed: bool,
    /// Bytes of the file its chain covers.
    covered: u64,
    /// Lines of the sidecar that are not chain lines.
    bad_lines: Vec<(usize, String)>,
}

impl ChainState {
    /// Opens the live file's chain sidecar and finds where the chain ends: its last line, else
    /// the newest rotated file's, else the last head published for the log, else the start.
    fn open(dir: &Path, name: &str) -> Result<(Self, Found), OutputError> {
        let path = chain_path(dir, name);
        let read = chain::read_chain(&path).map_err(|source| OutputError::Open { path: path.clone(), source })?;
        let existed = read.is_some();
        let (lines, bad_lines) = read.unwrap_or_default();
        let last = lines.last().cloned().or_else(|| last_chain_line(dir, &format!("{name}.1")));
        let (seq, head) = match &last {
            Some(l) => (l.seq, hash_from_hex(&l.hash).unwrap_or(GENESIS)),
            None => last_published(dir, name).unwrap_or((0, GENESIS)),
        };
        let live_last = lines.last();
        let mut file = chain::open_append_raw(&path)?;
        let len = file.metadata().map_err(|source| OutputError::Open { path: path.clone(), source })?.len();
        if !chain::ends_with_newline(&path, len).map_err(|source| OutputError::Open { path: path.clone(), source })? {
            file.write_all(b"\n").map_err(|source| OutputError::Write { path: path.clone(), source })?;
        }
        let state = ChainState {
            path,
            file,
            seq,
            head,
            first_seq: lines.first().map_or(0, |l| l.seq),
            next_line: live_last.map_or(1, |l| l.first_line + l.lines),
            published: 0,
            block: None,
        };
        let found = Found { existed, covered: live_last.map_or(0, ChainLine::end), bad_lines };
        Ok((state, found))
    }

    /// Appends `line` to the sidecar (one write) and moves the head to it.
    fn append(&mut self, line: ChainLine) -> Result<(), OutputError> {
        let mut bytes = serde_json::to_vec(&line)?;
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(|source| OutputError::Write { path: self.path.clone(), source })?;
        self.seq = line.seq;
        self.head = hash_from_hex(&line.hash).expect("hex written here");
        if self.first_seq == 0 {
            self.first_seq = line.seq;
        }
        self.next_line = line.first_line + line.lines;
        Ok(())
    }
}

/// The last chain line of the log file named `file` in `dir`, if it has one.
fn last_chain_line(dir: &Path, file: &str) -> Option<ChainLine> {
    chain::read_chain(&chain_path(dir, file)).ok().flatten().and_then(|(lines, _)| lines.into_iter().last())
}

/// The last head published for `log` in `dir`'s `chain-heads.log`: (seq, hash).
fn last_published(dir: &Path, log: &str) -> Option<(u64, [u8; 32])> {
    let (records, _) = chain::read_heads(dir).ok().flatten()?;
    records
        .iter()
        .filter(|r| r.log == log && r.last_seq > 0)
        .max_by_key(|r| r.last_seq)
        .and_then(|r| Some((r.last_seq, hash_from_hex(&r.head)?)))
}

/// Numbers `N` of the rotated files `<name>.N` in `dir`, unordered.
pub(crate) fn rotated_numbers(dir: &Path, name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let n = file.strip_prefix(name)?.strip_prefix('.')?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n.parse::<u32>().ok().filter(|&n| n > 0)
        })
        .collect()
}

/// Renames the log file `from` to `to` in `dir`, then its chain (data first: see
/// [`repair_interrupted_rotation`]).
fn rename_pair(dir: &Path, from: &str, to: &str) -> Result<(), OutputError> {
    let data = dir.join(from);
    if data.exists() {
        fs::rename(&data, dir.join(to)).map_err(|source| OutputError::Write { path: data, source })?;
    }
    let chain = chain_path(dir, from);
    if chain.exists() {
        fs::rename(&chain, chain_path(dir, to)).map_err(|source| OutputError::Write { path: chain, source })?;
    }
    Ok(())
}

/// A crash between the two renames of a rotation step leaves a file without its chain and the
/// chain under the previous name, with no file: finish the step.
fn repair_interrupted_rotation(dir: &Path, name: &str, max_files: u32) -> Result<(), OutputError> {
    let file = |n: u32| if n == 0 { name.to_owned() } else { format!("{name}.{n}") };
    for n in (1..=max_files.saturating_add(1)).rev() {
        let (from, to) = (file(n - 1), file(n));
        if dir.join(&to).exists()
            && !chain_path(dir, &to).exists()
            && !dir.join(&from).exists()
            && chain_path(dir, &from).exists()
        {
            tracing::warn!(message = "Finishing a rotation interrupted between its renames.", file = %to);
            let chain = chain_path(dir, &from);
            fs::rename(&chain, chain_path(dir, &to)).map_err(|source| OutputError::Write { path: chain, source })?;
        }
    }
    Ok(())
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

/// The evidence metrics of the rotating logs, labelled by `log` (`flows`, `audit`).
pub struct EvidenceMetrics {
    removed_files: IntCounterVec,
    removed_bytes: IntCounterVec,
    chain_breaks: IntCounterVec,
    recovered_blocks: IntCounterVec,
}

impl EvidenceMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let family = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["log"]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        Self {
            removed_files: family(
                "flowaudit_retention_removed_files_total",
                "Rotated log files deleted by max_files or retention.",
            ),
            removed_bytes: family("flowaudit_retention_removed_bytes_total", "Bytes of the rotated log files deleted."),
            chain_breaks: family(
                "flowaudit_chain_breaks_total",
                "Log files found at open shorter than their hash chain claims, or with a missing or unreadable chain.",
            ),
            recovered_blocks: family(
                "flowaudit_chain_recovered_blocks_total",
                "Log blocks found at open without their chain line (a crash) and chained then.",
            ),
        }
    }

    /// Counts `events` of the log `log`.
    pub fn observe(&self, log: &str, events: EvidenceEvents) {
        self.removed_files.with_label_values(&[log]).inc_by(events.removed_files);
        self.removed_bytes.with_label_values(&[log]).inc_by(events.removed_bytes);
        self.chain_breaks.with_label_values(&[log]).inc_by(events.chain_breaks);
        self.recovered_blocks.with_label_values(&[log]).inc_by(events.recovered_blocks);
    }
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

    #[test]
    fn evidence_metrics_count_per_log() {
        let registry = Registry::new();
        let metrics = EvidenceMetrics::new(&registry);
        metrics.observe("flows", EvidenceEvents { removed_files: 2, removed_bytes: 300, ..Default::default() });
        metrics.observe("audit", EvidenceEvents { chain_breaks: 1, recovered_blocks: 3, ..Default::default() });
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        for line in [
            "flowaudit_retention_removed_files_total{log=\"flows\"} 2",
            "flowaudit_retention_removed_bytes_total{log=\"flows\"} 300",
            "flowaudit_chain_breaks_total{log=\"audit\"} 1",
            "flowaudit_chain_recovered_blocks_total{log=\"audit\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn chain_lines_are_one_per_flush_and_sidecars_stay_out_of_the_log_glob() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            FlowLogWriter::open(FileConfig { dir: dir.path().into(), max_file_size: 1 << 20, max_files: 2 }).unwrap();
        w.write(&[record(1), record(2), record(3)]).unwrap();
        w.write(&[]).unwrap();
        w.write(&[record(4)]).unwrap();
        let chain = fs::read_to_string(dir.path().join("chain/flows.log.chain")).unwrap();
        let lines: Vec<chain::ChainLine> = chain.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().map(|l| (l.seq, l.first_line, l.lines)).collect::<Vec<_>>(), [(1, 1, 3), (2, 4, 1)]);
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.starts_with("flows.log"))
            .collect();
        assert_eq!(names, ["flows.log"]);
    }
}
