//! Tamper evidence for the rotating logs: the hash-chain sidecars and the published chain heads.
//!
//! Takes: the blocks of bytes [`super::RotatingLog`] flushes. Gives: one [`ChainLine`] per block in
//! `<dir>/chain/<file>.chain`, and one [`HeadRecord`] per rotation, removal, checkpoint or break in
//! `<dir>/chain-heads.log` (HMAC-SHA256 signed when a key is configured). Must never: write a
//! chain line for bytes that are not yet written to the log file, or hold the key anywhere but in
//! memory. The format is documented in `docs/evidence.md`; [`super::verify`] reads it.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{OutputError, file::FILE_MODE};

/// Subdirectory of the log directory that holds the chain sidecars. The sidecars are kept out of
/// the log directory itself so that readers taking `flows.log*` never see them.
pub const CHAIN_DIR: &str = "chain";
/// The append-only file of published chain heads, in the log directory.
pub const HEADS_LOG: &str = "chain-heads.log";
/// The `prev` of the very first block of a log.
pub const GENESIS: [u8; 32] = [0; 32];

/// One line of a chain sidecar: one flushed block of the log file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLine {
    /// Position of the block in the log's chain, from 1, continuing across files and restarts.
    pub seq: u64,
    /// Byte offset of the block in its file.
    pub offset: u64,
    /// Line number (from 1) of the block's first line in its file.
    pub first_line: u64,
    /// Lines in the block.
    pub lines: u64,
    /// Bytes in the block.
    pub bytes: u64,
    /// `hash` of the block before (hex), [`GENESIS`] for the first.
    pub prev: String,
    /// SHA-256(prev || block bytes), hex.
    pub hash: String,
    /// The agent found these bytes in the file without a chain line at open (a crash between the
    /// data write and the chain write) and chained them then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// The agent found the file inconsistent with its chain at open (shorter than the chain
    /// claims, or the chain missing or unreadable): why. A break line covers no bytes; `offset` is
    /// where the file ended then.
    #[serde(default, rename = "break", skip_serializing_if = "Option::is_none")]
    pub break_reason: Option<String>,
}

impl ChainLine {
    /// Offset just past the block.
    pub fn end(&self) -> u64 {
        self.offset + self.bytes
    }
}

/// One line of `chain-heads.log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// The log: `flows.log`, `audit.log`.
    pub log: String,
    /// `rotated` (a file was closed: its head), `removed` (a rotated file was deleted by
    /// rotation or retention), `checkpoint` (the live file's head, hourly), `break` (the agent
    /// found a file inconsistent with its chain at open).
    pub event: String,
    /// Name of the file when the record was written (`flows.log.1` for a rotation).
    pub file: String,
    /// First chain `seq` of the file (0: the file had no chain).
    pub first_seq: u64,
    /// Last chain `seq` of the file at that moment (0: the file had no chain).
    pub last_seq: u64,
    /// `hash` of chain line `last_seq` (hex; empty when the file had no chain).
    pub head: String,
    /// Bytes of the file at that moment.
    pub bytes: u64,
    /// RFC 3339 time of the record.
    pub time: String,
    /// Why (`removed`: `max_files`, `max_age`, `max_total_size`; `break`: what was found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// HMAC-SHA256 (hex) of this record's JSON without `sig`, when a key is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl HeadRecord {
    /// The bytes that `sig` signs: the record's JSON without `sig`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.sig = None;
        serde_json::to_vec(&unsigned).expect("a head record serializes")
    }
}

/// The secret of the head signatures, read from a file. Never printed.
#[derive(Clone)]
pub struct HmacKey(Arc<[u8]>);

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

/// The key file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct KeyError {
    /// The key file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Longest key file read.
const MAX_KEY_FILE: u64 = 4096;

impl HmacKey {
    /// The key in `bytes` (a trailing newline is not part of it).
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!("the key has {} bytes, at least {MIN_KEY_LEN} are needed", bytes.len()));
        }
        Ok(Self(bytes.into()))
    }

    /// Reads the key from `path`; the error says which file and why.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        use std::io::Read as _;
        let error = |reason: String| KeyError { path: path.to_owned(), reason };
        // Bounded: a config naming /dev/zero (or a huge file) must not exhaust memory.
        let mut bytes = Vec::new();
        fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
            .map_err(|e| error(format!("cannot read the key: {e}")))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(error(format!("longer than {MAX_KEY_FILE} bytes: not a key file")));
        }
        Self::new(&bytes).map_err(error)
    }

    /// HMAC-SHA256 of `msg`, hex.
    pub fn sign(&self, msg: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg);
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `sig` (hex) is the HMAC-SHA256 of `msg` (compared in constant time).
    pub fn check(&self, msg: &[u8], sig: &str) -> bool {
        let Some(sig) = unhex(sig) else { return false };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg);
        mac.verify_slice(&sig).is_ok()
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Bytes of a hex string, `None` when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A 32-byte hash from hex.
pub fn hash_from_hex(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

/// A hasher for one block: SHA-256 fed `prev` first.
pub fn block_hasher(prev: &[u8; 32]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(prev);
    h
}

/// Finishes a block hash.
pub fn finish(hasher: Sha256) -> [u8; 32] {
    hasher.finalize().into()
}

/// Path of the chain sidecar of the log file named `file` in `dir`.
pub fn chain_path(dir: &Path, file: &str) -> PathBuf {
    dir.join(CHAIN_DIR).join(format!("{file}.chain"))
}

/// The records of a JSON-lines file, and the line number (from 1) and text of every line that
/// is not one.
pub type Parsed<T> = (Vec<T>, Vec<(usize, String)>);

fn read_json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<Parsed<T>>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        match serde_json::from_slice::<T>(raw) {
            Ok(item) => items.push(item),
            Err(_) => bad.push((i + 1, String::from_utf8_lossy(raw).into_owned())),
        }
    }
    Ok(Some((items, bad)))
}

/// The chain lines of a sidecar, and every line that is not one. A missing file is `Ok(None)`.
pub fn read_chain(path: &Path) -> io::Result<Option<Parsed<ChainLine>>> {
    read_json_lines(path)
}

/// The records of `dir`'s `chain-heads.log`, and every line that is not one. A missing file is
/// `Ok(None)`.
pub fn read_heads(dir: &Path) -> io::Result<Option<Parsed<HeadRecord>>> {
    read_json_lines(&dir.join(HEADS_LOG))
}

/// Opens a file for appending with the log files' mode.
pub(crate) fn open_append_raw(path: &Path) -> Result<File, OutputError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| OutputError::Open { path: path.to_owned(), source })
}

/// Appends one record to `<dir>/chain-heads.log`, signed when `key` is set.
pub fn publish(dir: &Path, mut record: HeadRecord, key: Option<&HmacKey>) -> Result<(), OutputError> {
    record.sig = key.map(|k| k.sign(&record.signed_bytes()));
    let mut line = serde_json::to_vec(&record)?;
    line.push(b'\n');
    let path = dir.join(HEADS_LOG);
    open_append_raw(&path)?.write_all(&line).map_err(|source| OutputError::Write { path, source })
}

/// Now, RFC 3339 to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Whether the file ends with a newline (an empty file does).
pub(crate) fn ends_with_newline(path: &Path, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    use io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// SHA-256(prev || bytes `offset..offset+len` of `path`) and the newlines in that range. `None`
/// when the file ends before `offset + len`.
pub fn hash_range(path: &Path, prev: &[u8; 32], offset: u64, len: u64) -> io::Result<Option<([u8; 32], u64)>> {
    use io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    if f.metadata()?.len() < offset + len {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut hasher = block_hasher(prev);
    let mut newlines = 0;
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        f.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        left -= n as u64;
    }
    Ok(Some((finish(hasher), newlines)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_hash_of_a_block() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
        let mut h = block_hasher(&GENESIS);
        h.update(b"a\n");
        let expected: [u8; 32] = Sha256::digest([&GENESIS[..], b"a\n"].concat()).into();
        assert_eq!(finish(h), expected);
    }

    #[test]
    fn signatures_check_with_the_same_key_only() {
        let key = HmacKey::new(b"0123456789abcdef\n").unwrap();
        let other = HmacKey::new(b"0123456789abcdeX").unwrap();
        let sig = key.sign(b"msg");
        assert!(key.check(b"msg", &sig));
        assert!(!key.check(b"msg2", &sig));
        assert!(!other.check(b"msg", &sig));
        assert!(HmacKey::new(b"short\n").is_err());
        assert_eq!(format!("{key:?}"), "HmacKey(..)");
    }

    #[test]
    fn a_key_file_is_read_bounded() {
        let err = HmacKey::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("longer than 4096 bytes"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert!(HmacKey::from_file(&path).is_ok());
    }

    #[test]
    fn chain_line_json_has_the_documented_shape() {
        let line = ChainLine {
            seq: 1,
            offset: 0,
            first_line: 1,
            lines: 2,
            bytes: 10,
            prev: hex(&GENESIS),
            hash: "ab".into(),
            recovered: false,
            break_reason: None,
        };
        let v: serde_json::Value = serde_json::to_value(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 7, "{v}");
        let line = ChainLine { recovered: true, break_reason: Some("x".into()), ..line };
        let v: serde_json::Value = serde_json::to_value(&line).unwrap();
        assert_eq!((v["recovered"].as_bool(), v["break"].as_str()), (Some(true), Some("x")));
    }
}
