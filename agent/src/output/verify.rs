//! `flowaudit verify`: checks the hash chains of a log directory and the heads it published.
//!
//! Takes: a directory written by [`super::RotatingLog`] (`*.log`, `*.log.N`, `chain/*.chain`,
//! `chain-heads.log`) and optionally the HMAC key. Gives: a [`Report`] listing every finding
//! (changed, truncated, removed, unchained, reordered bytes; chain breaks; heads that do not match
//! or are not signed). Must never: write to the directory, or stop at the first finding. What it
//! can and cannot prove is in `docs/evidence.md`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    chain::{
        self, CHAIN_DIR, ChainLine, GENESIS, HEADS_LOG, HeadRecord, HmacKey, block_hasher, finish, hash_from_hex, hex,
    },
    file::rotated_numbers,
};

/// The directory cannot be verified at all (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct VerifyError {
    /// The offending path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// What kind of tampering a finding shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Bytes of a block differ from what was chained, or a chain line does not follow its
    /// predecessor.
    Changed,
    /// A block's bytes are gone from the end of a file, or the chain ends before a published head.
    Truncated,
    /// Blocks or whole files are missing (a gap in `seq`, or a file gone without a recorded removal).
    Removed,
    /// Bytes without a chain line (appended after the fact, or a file without a chain).
    Unchained,
    /// Files are not in chain order (swapped or renamed).
    Reordered,
    /// The agent found a file inconsistent with its chain at open and started a new segment.
    Break,
    /// A head in `chain-heads.log` differs from the chain (the chain was rewritten after it was
    /// published).
    HeadMismatch,
    /// A record of `chain-heads.log` has a wrong HMAC.
    BadSignature,
    /// A record of `chain-heads.log` has no HMAC although a key was given.
    Unsigned,
    /// A chain or heads line is not readable, or `chain-heads.log` is missing although files
    /// were rotated.
    Unreadable,
}

/// One piece of evidence of tampering.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What it shows.
    pub kind: FindingKind,
    /// The file concerned (a log file, its chain, or `chain-heads.log`).
    pub file: String,
    /// The chain `seq` concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The line range concerned (first, last; from 1), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<(u64, u64)>,
    /// A sentence for a person.
    pub detail: String,
}

/// One file of a log, as verified.
#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    /// File name.
    pub file: String,
    /// Bytes (absent: the file is missing).
    pub bytes: Option<u64>,
    /// First and last chain `seq` (absent: no chain line).
    pub seq: Option<(u64, u64)>,
    /// Chain lines.
    pub blocks: usize,
    /// Blocks the agent chained as recovered after a crash.
    pub recovered: usize,
}

/// One log (`flows.log`, `audit.log`) as verified, files oldest first.
#[derive(Clone, Debug, Serialize)]
pub struct LogSummary {
    /// Live file name.
    pub log: String,
    /// Its files, oldest first.
    pub files: Vec<FileSummary>,
}

/// The result of [`verify_dir`].
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The directory.
    pub dir: PathBuf,
    /// True when nothing was found.
    pub intact: bool,
    /// Every log found.
    pub logs: Vec<LogSummary>,
    /// Records of `chain-heads.log` checked.
    pub heads: usize,
    /// Whether their signatures were checked (a key was given).
    pub signatures_checked: bool,
    /// Every finding.
    pub findings: Vec<Finding>,
    /// What was accepted and why (recovered blocks, recorded removals), and what was not checked.
    pub notes: Vec<String>,
}

impl Report {
    /// The report for a person.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.intact {
            "intact".to_owned()
        } else {
            format!("TAMPERING FOUND ({} findings)", self.findings.len())
        };
        let _ = writeln!(out, "{}: {verdict}", self.dir.display());
        for log in &self.logs {
            let seqs: Vec<_> = log.files.iter().filter_map(|f| f.seq).collect();
            let span = match (seqs.iter().map(|s| s.0).min(), seqs.iter().map(|s| s.1).max()) {
                (Some(a), Some(b)) => format!(", chain seq {a}..{b}"),
                _ => String::new(),
            };
            let _ = writeln!(out, "{}: {} files{span}", log.log, log.files.len());
        }
        let sig = if self.signatures_checked { ", signatures checked" } else { "" };
        let _ = writeln!(out, "{HEADS_LOG}: {} records{sig}", self.heads);
        for f in &self.findings {
            let kind =
                serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let mut at = f.file.clone();
            if let Some((a, b)) = f.lines {
                let _ = write!(at, " lines {a}-{b}");
            }
            if let Some(seq) = f.seq {
                let _ = write!(at, " (block seq {seq})");
            }
            let _ = writeln!(out, "{kind}: {at}: {}", f.detail);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// One log file and its chain.
struct FileChain {
    name: String,
    path: PathBuf,
    len: Option<u64>,
    chain: Option<Vec<ChainLine>>,
}

fn bad(path: &Path, reason: impl Into<String>) -> VerifyError {
    VerifyError { path: path.to_owned(), reason: reason.into() }
}

/// The log a file name belongs to: `flows.log` for `flows.log` and `flows.log.3`.
fn log_of(file: &str) -> Option<String> {
    if file == HEADS_LOG {
        return None;
    }
    if file.ends_with(".log") {
        return Some(file.to_owned());
    }
    let (base, n) = file.rsplit_once('.')?;
    (base.ends_with(".log") && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| base.to_owned())
}

fn lines_of(l: &ChainLine) -> Option<(u64, u64)> {
    (l.lines > 0).then(|| (l.first_line, l.first_line + l.lines - 1))
}

/// Verifies every log in `dir` (see the module doc). `Err` only when the directory cannot be
/// verified at all; every tampering found is in the [`Report`].
pub fn verify_dir(dir: &Path, key: Option<&HmacKey>) -> Result<Report, VerifyError> {
    let meta = fs::metadata(dir).map_err(|e| bad(dir, e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad(dir, "not a directory"));
    }
    let mut logs = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(|e| bad(dir, e.to_string()))? {
        let entry = entry.map_err(|e| bad(dir, e.to_string()))?;
        if let Some(log) = entry.file_name().to_str().and_then(log_of) {
            logs.insert(log);
        }
    }
    let chain_dir = dir.join(CHAIN_DIR);
    let mut chain_only: HashMap<String, BTreeSet<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir(&chain_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(file) = name.strip_suffix(".chain") else { continue };
            if let Some(log) = log_of(file) {
                let n = file
                    .strip_prefix(log.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .and_then(|n| n.parse::<u32>().ok());
                chain_only.entry(log.clone()).or_default().extend(n);
                logs.insert(log);
            }
        }
    }
    let heads = chain::read_heads(dir).map_err(|e| bad(&dir.join(HEADS_LOG), e.to_string()))?;
    if let Some((records, _)) = &heads {
        logs.extend(records.iter().map(|r| r.log.clone()));
    }
    if logs.is_empty() {
        return Err(bad(dir, "no *.log files, chains or chain-heads.log here: not a flowaudit log directory"));
    }

    let mut v = Verifier { findings: Vec::new(), notes: Vec::new() };
    let (records, heads_present) = match heads {
        Some((records, bad_lines)) => {
            for (n, text) in bad_lines {
                v.find(
                    FindingKind::Unreadable,
                    HEADS_LOG,
                    None,
                    None,
                    format!("line {n} is not a head record: {text:.120}"),
                );
            }
            (records, true)
        }
        None => (Vec::new(), false),
    };
    v.check_signatures(&records, key);

    let mut summaries = Vec::new();
    for log in &logs {
        let mut numbers: BTreeSet<u32> = rotated_numbers(dir, log).into_iter().collect();
        numbers.extend(chain_only.get(log).into_iter().flatten());
        let mut files = Vec::new();
        for n in numbers.iter().rev().copied().map(Some).chain([None]) {
            let name = n.map_or_else(|| log.clone(), |n| format!("{log}.{n}"));
            let path = dir.join(&name);
            let len = match fs::metadata(&path) {
                Ok(m) => Some(m.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(bad(&path, e.to_string())),
            };
            let cpath = chain::chain_path(dir, &name);
            let chain = match chain::read_chain(&cpath).map_err(|e| bad(&cpath, e.to_string()))? {
                Some((lines, bad_lines)) => {
                    for (k, text) in bad_lines {
                        v.find(
                            FindingKind::Unreadable,
                            &format!("{CHAIN_DIR}/{name}.chain"),
                            None,
                            None,
                            format!("line {k} is not a chain line: {text:.120}"),
                        );
                    }
                    Some(lines)
                }
                None => None,
            };
            files.push(FileChain { name, path, len, chain });
        }
        if !heads_present && files.len() > 1 {
            v.find(
                FindingKind::Unreadable,
                HEADS_LOG,
                None,
                None,
                format!("{HEADS_LOG} is missing although {log} has rotated files: the heads cannot be checked"),
            );
        }
        let log_records: Vec<(usize, &HeadRecord)> =
            records.iter().enumerate().filter(|(_, r)| &r.log == log).map(|(i, r)| (i + 1, r)).collect();
        summaries.push(v.check_log(log, &files, &log_records)?);
    }
    if !heads_present {
        v.notes
            .push(format!("no {HEADS_LOG}: the oldest files' first blocks cannot be checked against a published head"));
    }
    if key.is_none() && records.iter().any(|r| r.sig.is_some()) {
        v.notes.push(format!("{HEADS_LOG} is signed but no --hmac-key-file was given: signatures not checked"));
    }
    Ok(Report {
        dir: dir.to_owned(),
        intact: v.findings.is_empty(),
        logs: summaries,
        heads: records.len(),
        signatures_checked: key.is_some(),
        findings: v.findings,
        notes: v.notes,
    })
}

struct Verifier {
    findings: Vec<Finding>,
    notes: Vec<String>,
}

impl Verifier {
    fn find(&mut self, kind: FindingKind, file: &str, seq: Option<u64>, lines: Option<(u64, u64)>, detail: String) {
        self.findings.push(Finding { kind, file: file.to_owned(), seq, lines, detail });
    }

    fn check_signatures(&mut self, records: &[HeadRecord], key: Option<&HmacKey>) {
        let Some(key) = key else { return };
        for (i, r) in records.iter().enumerate() {
            let what = format!("line {} ({} {}, {})", i + 1, r.event, r.file, r.time);
            match &r.sig {
                None => self.find(FindingKind::Unsigned, HEADS_LOG, None, None, format!("{what} has no signature")),
                Some(sig) if !key.check(&r.signed_bytes(), sig) => self.find(
                    FindingKind::BadSignature,
                    HEADS_LOG,
                    None,
                    None,
                    format!("{what}: the signature does not match (changed, forged, or another key)"),
                ),
                Some(_) => {}
            }
        }
    }

    /// Checks one log's files (oldest first, the live one last) and its published heads.
    fn check_log(
        &mut self,
        log: &str,
        files: &[FileChain],
        records: &[(usize, &HeadRecord)],
    ) -> Result<LogSummary, VerifyError> {
        let removed = |seq: u64| {
            records.iter().find(|(_, r)| r.event == "removed" && r.first_seq <= seq && seq <= r.last_seq && seq > 0)
        };
        let mut summary = LogSummary { log: log.to_owned(), files: Vec::new() };
        let mut hashes: BTreeMap<u64, (String, &str)> = BTreeMap::new();
        for f in files {
            let lines = f.chain.as_deref().unwrap_or_default();
            summary.files.push(FileSummary {
                file: f.name.clone(),
                bytes: f.len,
                seq: lines.first().zip(lines.last()).map(|(a, b)| (a.seq, b.seq)),
                blocks: lines.len(),
                recovered: lines.iter().filter(|l| l.recovered).count(),
            });
            match (f.len, &f.chain) {
                (None, None) => continue,
                (None, Some(lines)) => {
                    let (first, last) = (lines.first().map_or(0, |l| l.seq), lines.last().map_or(0, |l| l.seq));
                    match removed(last) {
                        Some((_, r)) => self.notes.push(format!(
                            "{}: removed ({}) at {}; its chain sidecar is left",
                            f.name,
                            r.reason.as_deref().unwrap_or("-"),
                            r.time
                        )),
                        None => self.find(
                            FindingKind::Removed,
                            &f.name,
                            None,
                            None,
                            format!("the file is missing but its chain (seq {first}..{last}) is there, and no removal is recorded"),
                        ),
                    }
                    continue;
                }
                (Some(len), None) => {
                    if len > 0 {
                        self.find(
                            FindingKind::Unchained,
                            &f.name,
                            None,
                            None,
                            format!("{len} bytes and no chain (chain/{}.chain is missing)", f.name),
                        );
                    }
                    continue;
                }
                (Some(len), Some(lines)) => self.check_file(f, len, lines)?,
            }
            for l in lines {
                hashes.insert(l.seq, (l.hash.clone(), f.name.as_str()));
            }
        }

        // Files in chain order, and the links between them.
        let mut chained: Vec<(&FileChain, &ChainLine, &ChainLine)> = files
            .iter()
            .filter(|f| f.len.is_some())
            .filter_map(|f| {
                let lines = f.chain.as_deref()?;
                Some((f, lines.first()?, lines.last()?))
            })
            .collect();
        let by_name: Vec<&str> = chained.iter().map(|c| c.0.name.as_str()).collect();
        chained.sort_by_key(|c| c.1.seq);
        let by_seq: Vec<&str> = chained.iter().map(|c| c.0.name.as_str()).collect();
        if by_name != by_seq {
            let order = chained
                .iter()
                .map(|(f, a, b)| format!("{} (seq {}..{})", f.name, a.seq, b.seq))
                .collect::<Vec<_>>()
                .join(", ");
            self.find(
                FindingKind::Reordered,
                log,
                None,
                None,
                format!("the files are not in chain order (files swapped or renamed); by chain order: {order}"),
            );
        }
        for pair in chained.windows(2) {
            let ((fa, _, a), (fb, b, _)) = (pair[0], pair[1]);
            if b.seq > a.seq + 1 {
                self.find(
                    FindingKind::Removed,
                    &fb.name,
                    Some(b.seq),
                    None,
                    format!(
                        "blocks seq {}..{} between {} and {} are missing (a removed file or cut blocks)",
                        a.seq + 1,
                        b.seq - 1,
                        fa.name,
                        fb.name
                    ),
                );
            } else if b.seq <= a.seq {
                self.find(
                    FindingKind::Reordered,
                    &fb.name,
                    Some(b.seq),
                    None,
                    format!("{} starts at seq {}, not after {} which ends at seq {}", fb.name, b.seq, fa.name, a.seq),
                );
            } else if b.prev != a.hash {
                self.find(
                    FindingKind::Changed,
                    &fb.name,
                    Some(b.seq),
                    lines_of(b),
                    format!("its first block does not follow the last block of {} (prev differs)", fa.name),
                );
            }
        }
        // The oldest surviving block: the start of the log, or the head published for the block
        // before it, whose file must have been removed on record.
        let mut gap_before_oldest = false;
        if let Some((f, first, _)) = chained.first() {
            if first.seq <= 1 {
                if first.prev != hex(&GENESIS) {
                    self.find(
                        FindingKind::Changed,
                        &f.name,
                        Some(first.seq),
                        lines_of(first),
                        "the first block of the log does not start from the genesis hash".to_owned(),
                    );
                }
            } else {
                let before = first.seq - 1;
                let published = records.iter().find(|(_, r)| r.last_seq == before);
                match published {
                    Some((k, r)) if r.head != first.prev => self.find(
                        FindingKind::HeadMismatch,
                        &f.name,
                        Some(first.seq),
                        lines_of(first),
                        format!(
                            "its first block follows head {} but {HEADS_LOG} line {k} published {}",
                            first.prev, r.head
                        ),
                    ),
                    _ => {}
                }
                match removed(before) {
                    Some((_, r)) => self.notes.push(format!(
                        "{log}: blocks up to seq {before} were removed on record ({}, {} at {})",
                        r.reason.as_deref().unwrap_or("-"),
                        r.file,
                        r.time
                    )),
                    None => {
                        gap_before_oldest = true;
                        self.find(
                            FindingKind::Removed,
                            &f.name,
                            Some(first.seq),
                            None,
                            format!(
                                "blocks before seq {} (older files) are gone and {HEADS_LOG} records no removal of seq {before}",
                                first.seq
                            ),
                        );
                    }
                }
            }
        }
        // Every published head against the chain.
        let (min, max) = (chained.first().map_or(0, |c| c.1.seq), chained.iter().map(|c| c.2.seq).max().unwrap_or(0));
        for (k, r) in records {
            if r.last_seq == 0 {
                continue;
            }
            let what = format!("{HEADS_LOG} line {k} ({} {} at {})", r.event, r.file, r.time);
            if let Some((hash, file)) = hashes.get(&r.last_seq) {
                if *hash != r.head {
                    self.find(
                        FindingKind::HeadMismatch,
                        file,
                        Some(r.last_seq),
                        None,
                        format!("{what} published head {} for this block; the chain now has {hash}: rewritten after publication", r.head),
                    );
                }
            } else if r.last_seq > max {
                self.find(
                    FindingKind::Truncated,
                    log,
                    Some(r.last_seq),
                    None,
                    format!(
                        "{what} published seq {} but the chain ends at seq {max}: blocks cut from the end",
                        r.last_seq
                    ),
                );
            } else if r.last_seq < min && removed(r.last_seq).is_none() && !gap_before_oldest {
                self.find(
                    FindingKind::Removed,
                    log,
                    Some(r.last_seq),
                    None,
                    format!("{what}: seq {} is gone and no removal is recorded", r.last_seq),
                );
            }
        }
        for f in &summary.files {
            if f.recovered > 0 {
                self.notes.push(format!(
                    "{}: {} block(s) written without their chain line (a crash) were chained as recovered by the agent at its next start",
                    f.file, f.recovered
                ));
            }
        }
        Ok(summary)
    }

    /// Recomputes every block of one file.
    fn check_file(&mut self, f: &FileChain, len: u64, lines: &[ChainLine]) -> Result<(), VerifyError> {
        let io = |e: std::io::Error| bad(&f.path, e.to_string());
        let mut expected = 0;
        let mut before: Option<&ChainLine> = None;
        for l in lines {
            if let Some(p) = before {
                if l.seq != p.seq + 1 {
                    self.find(
                        FindingKind::Removed,
                        &f.name,
                        Some(l.seq),
                        lines_of(l),
                        format!(
                            "chain lines seq {}..{} are missing before this block",
                            p.seq + 1,
                            l.seq.saturating_sub(1)
                        ),
                    );
                } else if l.prev != p.hash {
                    self.find(
                        FindingKind::Changed,
                        &f.name,
                        Some(l.seq),
                        lines_of(l),
                        format!("the chain line does not follow seq {} (prev differs)", p.seq),
                    );
                }
            }
            before = Some(l);
            let Some(prev) = hash_from_hex(&l.prev) else {
                self.find(FindingKind::Unreadable, &f.name, Some(l.seq), None, "prev is not a hash".to_owned());
                continue;
            };
            if let Some(reason) = &l.break_reason {
                self.find(
                    FindingKind::Break,
                    &f.name,
                    Some(l.seq),
                    None,
                    format!("the agent found the file inconsistent with its chain at open ({reason}) and started a new segment at byte {}", l.offset),
                );
                if l.hash != hex(&finish(block_hasher(&prev))) {
                    self.find(
                        FindingKind::Changed,
                        &f.name,
                        Some(l.seq),
                        None,
                        "the break line's hash is wrong".to_owned(),
                    );
                }
                expected = l.offset;
                continue;
            }
            if l.offset != expected {
                self.find(
                    FindingKind::Changed,
                    &f.name,
                    Some(l.seq),
                    lines_of(l),
                    format!("the block starts at byte {} but the one before ended at byte {expected}", l.offset),
                );
            }
            match chain::hash_range(&f.path, &prev, l.offset, l.bytes).map_err(io)? {
                None => self.find(
                    FindingKind::Truncated,
                    &f.name,
                    Some(l.seq),
                    lines_of(l),
                    format!("bytes {}..{} are gone: the file ends at byte {len}", l.offset, l.end()),
                ),
                Some((hash, _)) if hex(&hash) != l.hash => self.find(
                    FindingKind::Changed,
                    &f.name,
                    Some(l.seq),
                    lines_of(l),
                    format!("bytes {}..{} differ from what was chained", l.offset, l.end()),
                ),
                Some(_) => {}
            }
            expected = l.end();
        }
        if len > expected {
            let first = lines.last().map_or(1, |l| l.first_line + l.lines);
            let newlines =
                chain::hash_range(&f.path, &GENESIS, expected, len - expected).map_err(io)?.map_or(0, |r| r.1);
            self.find(
                FindingKind::Unchained,
                &f.name,
                None,
                (newlines > 0).then(|| (first, first + newlines - 1)),
                format!("bytes {expected}..{len} have no chain line (appended after the fact)"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, time::Duration};

    use super::*;
    use crate::output::{Evidence, EvidenceEvents, FileConfig, Retention, RotatingLog};

    const LOG: &str = "flows.log";

    /// Lines of 21 bytes; files of at most 100 bytes hold 4 lines (two flushes of 2 lines).
    fn cfg(dir: &Path, max_files: u32) -> FileConfig {
        FileConfig { dir: dir.to_owned(), max_file_size: 100, max_files }
    }

    fn write(log: &mut RotatingLog, lines: std::ops::RangeInclusive<u32>, per_flush: u32) {
        for n in lines {
            log.append_line(format!("line-{n:04}-xxxxxxxxxx").as_bytes()).unwrap();
            if n % per_flush == 0 {
                log.flush().unwrap();
            }
        }
        log.flush().unwrap();
    }

    /// Lines 1..=16 in batches of 2: live holds 13-16, .1 9-12, .2 5-8, .3 1-4.
    fn sixteen_lines(dir: &Path, evidence: Evidence) {
        let mut log = RotatingLog::open_with(cfg(dir, 5), LOG, evidence).unwrap();
        write(&mut log, 1..=16, 2);
    }

    fn verify(dir: &Path) -> Report {
        verify_dir(dir, None).unwrap()
    }

    fn kinds(r: &Report) -> Vec<(FindingKind, String)> {
        r.findings.iter().map(|f| (f.kind, f.file.clone())).collect()
    }

    #[test]
    fn intact_across_rotations_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        write(&mut log, 1..=10, 2);
        drop(log);
        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        write(&mut log, 11..=16, 2);
        drop(log);
        assert_eq!(fs::read_to_string(d.join("flows.log.3")).unwrap().lines().count(), 4);
        let r = verify(d);
        assert!(r.intact, "{}", r.to_text());
        let files = &r.logs[0].files;
        assert_eq!(
            files.iter().map(|f| (f.file.as_str(), f.seq)).collect::<Vec<_>>(),
            [
                ("flows.log.3", Some((1, 2))),
                ("flows.log.2", Some((3, 4))),
                ("flows.log.1", Some((5, 6))),
                (LOG, Some((7, 8)))
            ]
        );
        let (heads, _) = chain::read_heads(d).unwrap().unwrap();
        assert_eq!(heads.iter().filter(|h| h.event == "rotated").count(), 3);
        let chain = fs::read_to_string(d.join("chain/flows.log.chain")).unwrap();
        let first: ChainLine = serde_json::from_str(chain.lines().next().unwrap()).unwrap();
        assert_eq!((first.seq, first.first_line, first.lines, first.bytes), (7, 1, 2, 42));
        assert_eq!(r.to_text().lines().next().unwrap(), format!("{}: intact", d.display()));
    }

    #[test]
    fn one_changed_byte_is_reported_with_file_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        sixteen_lines(dir.path(), Evidence::default());
        let path = dir.path().join("flows.log.2");
        let mut bytes = fs::read(&path).unwrap();
        bytes[21 * 2 + 5] = b'9'; // third line of the file
        fs::write(&path, bytes).unwrap();
        let r = verify(dir.path());
        assert!(!r.intact);
        assert_eq!(r.findings.len(), 1, "{}", r.to_text());
        let f = &r.findings[0];
        assert_eq!(
            (f.kind, f.file.as_str(), f.lines, f.seq),
            (FindingKind::Changed, "flows.log.2", Some((3, 4)), Some(4))
        );
    }

    #[test]
    fn a_deleted_middle_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        sixteen_lines(dir.path(), Evidence::default());
        fs::remove_file(dir.path().join("flows.log.2")).unwrap();
        fs::remove_file(dir.path().join("chain/flows.log.2.chain")).unwrap();
        let r = verify(dir.path());
        assert!(!r.intact);
        assert!(
            r.findings.iter().any(|f| f.kind == FindingKind::Removed && f.detail.contains("seq 3..4")),
            "{}",
            r.to_text()
        );
        // Deleting only the data leaves the chain: also reported.
        let dir = tempfile::tempdir().unwrap();
        sixteen_lines(dir.path(), Evidence::default());
        fs::remove_file(dir.path().join("flows.log.2")).unwrap();
        assert!(kinds(&verify(dir.path())).contains(&(FindingKind::Removed, "flows.log.2".into())));
    }

    #[test]
    fn swapped_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        for (a, b) in [("flows.log.1", "flows.log.2"), ("chain/flows.log.1.chain", "chain/flows.log.2.chain")] {
            fs::rename(d.join(a), d.join("tmp")).unwrap();
            fs::rename(d.join(b), d.join(a)).unwrap();
            fs::rename(d.join("tmp"), d.join(b)).unwrap();
        }
        let r = verify(d);
        assert_eq!(kinds(&r), [(FindingKind::Reordered, LOG.into())], "{}", r.to_text());
        assert!(r.findings[0].detail.contains("flows.log.1 (seq 3..4), flows.log.2 (seq 5..6)"), "{}", r.to_text());
        // Swapping only the data files: every block of both is changed.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        fs::rename(d.join("flows.log.1"), d.join("tmp")).unwrap();
        fs::rename(d.join("flows.log.2"), d.join("flows.log.1")).unwrap();
        fs::rename(d.join("tmp"), d.join("flows.log.2")).unwrap();
        let r = verify(d);
        assert_eq!(r.findings.iter().filter(|f| f.kind == FindingKind::Changed).count(), 4, "{}", r.to_text());
    }

    #[test]
    fn a_truncated_live_file_is_reported_and_breaks_the_chain_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        let live = d.join(LOG);
        let f = fs::OpenOptions::new().write(true).open(&live).unwrap();
        f.set_len(21).unwrap();
        let r = verify(d);
        assert_eq!(kinds(&r), [(FindingKind::Truncated, LOG.into()), (FindingKind::Truncated, LOG.into())]);
        assert_eq!(r.findings.iter().map(|f| f.lines).collect::<Vec<_>>(), [Some((1, 2)), Some((3, 4))]);

        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        assert_eq!(log.take_events(), EvidenceEvents { chain_breaks: 1, ..Default::default() });
        write(&mut log, 17..=17, 1);
        drop(log);
        let r = verify(d);
        let k = kinds(&r);
        assert!(k.contains(&(FindingKind::Truncated, LOG.into())), "{}", r.to_text());
        assert!(k.contains(&(FindingKind::Break, LOG.into())), "{}", r.to_text());
        // Line 17, after the break, verifies.
        assert!(r.findings.iter().all(|f| f.seq != Some(10)), "{}", r.to_text());
        let (heads, _) = chain::read_heads(d).unwrap().unwrap();
        assert!(heads.iter().any(|h| h.event == "break"), "{heads:?}");
    }

    #[test]
    fn lines_written_without_their_chain_line_are_recovered_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        // A crash between the data write and the chain write; the last line is even cut short.
        fs::OpenOptions::new().append(true).open(d.join(LOG)).unwrap().write_all(b"line-0017\nline-00").unwrap();
        let r = verify(d);
        assert_eq!(kinds(&r), [(FindingKind::Unchained, LOG.into())], "{}", r.to_text());
        assert_eq!(r.findings[0].lines, Some((5, 5)));

        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        assert_eq!(log.take_events(), EvidenceEvents { recovered_blocks: 1, ..Default::default() });
        write(&mut log, 18..=18, 1);
        drop(log);
        // The cut line was ended; line 18 no longer fit and went to a new file.
        let text = fs::read_to_string(d.join("flows.log.1")).unwrap();
        assert!(text.ends_with("line-0016-xxxxxxxxxx\nline-0017\nline-00\n"), "{text}");
        assert_eq!(fs::read_to_string(d.join(LOG)).unwrap(), "line-0018-xxxxxxxxxx\n");
        let r = verify(d);
        assert!(r.intact, "{}", r.to_text());
        assert_eq!(r.logs[0].files.iter().map(|f| f.recovered).collect::<Vec<_>>(), [0, 0, 0, 1, 0]);
        assert!(r.notes.iter().any(|n| n.contains("recovered")), "{:?}", r.notes);
    }

    #[test]
    fn a_removed_chain_is_a_break_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        fs::remove_file(d.join("chain/flows.log.chain")).unwrap();
        assert!(kinds(&verify(d)).contains(&(FindingKind::Unchained, LOG.into())));
        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        assert_eq!(log.take_events().chain_breaks, 1);
        drop(log);
        let r = verify(d);
        // The head published at the clean stop before shows the live file's chain was redone.
        assert_eq!(
            kinds(&r),
            [(FindingKind::Break, LOG.into()), (FindingKind::HeadMismatch, LOG.into())],
            "{}",
            r.to_text()
        );
    }

    #[test]
    fn rotation_past_max_files_is_recorded_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut log = RotatingLog::open(cfg(d, 2), LOG).unwrap();
        write(&mut log, 1..=16, 2);
        // Four files were written, live and two rotated are kept: lines 1-4 went.
        assert_eq!(log.take_events(), EvidenceEvents { removed_files: 1, removed_bytes: 84, ..Default::default() });
        drop(log);
        assert!(!d.join("flows.log.3").exists());
        let r = verify(d);
        assert!(r.intact, "{}", r.to_text());
        assert!(r.notes.iter().any(|n| n.contains("removed on record (max_files")), "{:?}", r.notes);
        // Deleting the oldest survivor without a record is not retention.
        fs::remove_file(d.join("flows.log.2")).unwrap();
        fs::remove_file(d.join("chain/flows.log.2.chain")).unwrap();
        let r = verify(d);
        assert!(
            r.findings.iter().any(|f| f.kind == FindingKind::Removed && f.file == "flows.log.1"),
            "{}",
            r.to_text()
        );
    }

    #[test]
    fn retention_by_age_removes_the_old_files_only_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        let old = filetime::FileTime::from_system_time(std::time::SystemTime::now() - Duration::from_secs(10 * 86_400));
        for f in ["flows.log.3", "flows.log.2"] {
            filetime::set_file_mtime(d.join(f), old).unwrap();
        }
        let retention = Retention { max_age: Some(Duration::from_secs(8 * 86_400)), max_total_size: None };
        let mut log = RotatingLog::open_with(cfg(d, 5), LOG, Evidence { retention, hmac_key: None }).unwrap();
        assert_eq!(log.take_events(), EvidenceEvents { removed_files: 2, removed_bytes: 168, ..Default::default() });
        let left: Vec<bool> =
            ["flows.log.3", "flows.log.2", "flows.log.1", LOG].iter().map(|f| d.join(f).exists()).collect();
        assert_eq!(left, [false, false, true, true]);
        assert!(!d.join("chain/flows.log.2.chain").exists());
        write(&mut log, 17..=17, 1);
        assert_eq!(log.take_events(), EvidenceEvents::default(), "the new rotated files are recent");
        drop(log);
        let r = verify(d);
        assert!(r.intact, "{}", r.to_text());
        let (heads, _) = chain::read_heads(d).unwrap().unwrap();
        let removed: Vec<_> =
            heads.iter().filter(|h| h.event == "removed").map(|h| (h.file.as_str(), h.reason.as_deref())).collect();
        assert_eq!(removed, [("flows.log.3", Some("max_age")), ("flows.log.2", Some("max_age"))]);
    }

    #[test]
    fn retention_by_total_size_removes_the_oldest_files_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Four files of 84 bytes: 336 bytes; at most 200 kept means two go.
        let retention = Retention { max_age: None, max_total_size: Some(200) };
        let mut log = RotatingLog::open_with(cfg(d, 5), LOG, Evidence { retention, hmac_key: None }).unwrap();
        write(&mut log, 1..=16, 2);
        let events = log.take_events();
        drop(log);
        let left: Vec<&str> =
            ["flows.log.3", "flows.log.2", "flows.log.1", LOG].into_iter().filter(|f| d.join(f).exists()).collect();
        assert_eq!(left, ["flows.log.2", "flows.log.1", LOG]);
        // After the 3rd rotation: 4 files, 252 > 200: the oldest (lines 1-4) went at that rotation.
        assert_eq!(events, EvidenceEvents { removed_files: 1, removed_bytes: 84, ..Default::default() });
        let r = verify(d);
        assert!(r.intact, "{}", r.to_text());
        // A smaller limit at the next open removes one more, never the live file.
        let retention = Retention { max_age: None, max_total_size: Some(10) };
        let mut log = RotatingLog::open_with(cfg(d, 5), LOG, Evidence { retention, hmac_key: None }).unwrap();
        assert_eq!(log.take_events().removed_files, 2);
        drop(log);
        assert!(d.join(LOG).exists() && !d.join("flows.log.1").exists());
        assert!(verify(d).intact);
    }

    #[test]
    fn signed_heads_check_with_the_right_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = HmacKey::new(b"the right key, 32 bytes long....").unwrap();
        sixteen_lines(d, Evidence { retention: Retention::default(), hmac_key: Some(key.clone()) });
        assert!(verify_dir(d, Some(&key)).unwrap().intact);
        let r = verify(d);
        assert!(r.intact && r.notes.iter().any(|n| n.contains("signatures not checked")), "{}", r.to_text());
        let wrong = HmacKey::new(b"the wrong key, 32 bytes long....").unwrap();
        let r = verify_dir(d, Some(&wrong)).unwrap();
        // Three rotations and the checkpoint of the clean stop.
        assert_eq!(r.findings.len(), 4, "{}", r.to_text());
        assert!(r.findings.iter().all(|f| f.kind == FindingKind::BadSignature));
        // A head rewritten in place (and re-signed without the key) does not pass either.
        let heads = fs::read_to_string(d.join(HEADS_LOG)).unwrap();
        fs::write(d.join(HEADS_LOG), heads.replacen("\"rotated\"", "\"checkpoint\"", 1)).unwrap();
        let r = verify_dir(d, Some(&key)).unwrap();
        assert_eq!(kinds(&r), [(FindingKind::BadSignature, HEADS_LOG.into())], "{}", r.to_text());
    }

    #[test]
    fn a_rewritten_chain_is_caught_by_the_published_heads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sixteen_lines(d, Evidence::default());
        // Rewrite the oldest file and its whole chain consistently (a root attacker without the heads).
        let path = d.join("flows.log.3");
        let text = fs::read_to_string(&path).unwrap().replace("line-0002", "line-9999");
        fs::write(&path, &text).unwrap();
        let mut prev = GENESIS;
        let mut out = String::new();
        for (i, chunk) in text.as_bytes().chunks(42).enumerate() {
            let mut h = block_hasher(&prev);
            sha2::Digest::update(&mut h, chunk);
            let hash = finish(h);
            let line = ChainLine {
                seq: i as u64 + 1,
                offset: 42 * i as u64,
                first_line: 2 * i as u64 + 1,
                lines: 2,
                bytes: 42,
                prev: hex(&prev),
                hash: hex(&hash),
                recovered: false,
                break_reason: None,
            };
            out.push_str(&serde_json::to_string(&line).unwrap());
            out.push('\n');
            prev = hash;
        }
        fs::write(d.join("chain/flows.log.3.chain"), out).unwrap();
        let r = verify(d);
        let k = kinds(&r);
        assert!(k.contains(&(FindingKind::HeadMismatch, "flows.log.3".into())), "{}", r.to_text());
        assert!(k.contains(&(FindingKind::Changed, "flows.log.2".into())), "{}", r.to_text());
    }

    #[test]
    fn a_rotation_cut_between_its_renames_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        write(&mut log, 1..=12, 2);
        drop(log);
        // The last step of a rotation renamed the data, then the process died.
        for (from, to) in [("flows.log.2", "flows.log.3"), ("flows.log.1", "flows.log.2")] {
            fs::rename(d.join(from), d.join(to)).unwrap();
            fs::rename(chain::chain_path(d, from), chain::chain_path(d, to)).unwrap();
        }
        fs::rename(d.join(LOG), d.join("flows.log.1")).unwrap();
        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        assert_eq!(log.take_events(), EvidenceEvents::default());
        write(&mut log, 13..=14, 2);
        drop(log);
        let r = verify(d);
        assert!(r.intact, "{}", r.to_text());
    }

    #[test]
    fn a_checkpoint_catches_the_live_file_cut_together_with_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut log = RotatingLog::open(cfg(d, 5), LOG).unwrap();
        write(&mut log, 1..=4, 2);
        log.checkpoint().unwrap();
        log.checkpoint().unwrap();
        drop(log);
        let (heads, _) = chain::read_heads(d).unwrap().unwrap();
        assert_eq!(heads.len(), 1, "a checkpoint is published only when the head moved");
        assert_eq!((heads[0].event.as_str(), heads[0].last_seq), ("checkpoint", 2));
        // Cut the last block from both the file and the chain.
        fs::OpenOptions::new().write(true).open(d.join(LOG)).unwrap().set_len(42).unwrap();
        let chain = fs::read_to_string(d.join("chain/flows.log.chain")).unwrap();
        fs::write(d.join("chain/flows.log.chain"), format!("{}\n", chain.lines().next().unwrap())).unwrap();
        let r = verify(d);
        assert_eq!(kinds(&r), [(FindingKind::Truncated, LOG.into())], "{}", r.to_text());
        assert_eq!(r.findings[0].seq, Some(2));
    }

    #[test]
    fn bad_input_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify_dir(&dir.path().join("nope"), None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = verify_dir(dir.path(), None).unwrap_err();
        assert!(err.reason.contains("not a flowaudit log directory"), "{err}");
        fs::write(dir.path().join("x"), "").unwrap();
        assert_eq!(verify_dir(&dir.path().join("x"), None).unwrap_err().reason, "not a directory");
    }
}
