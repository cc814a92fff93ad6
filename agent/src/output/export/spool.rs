//! The on-disk spool of one exporter: sealed batches waiting for delivery, oldest first.
//!
//! Takes: batches of encoded items. Gives: the same batches, in order, until each is removed
//! after delivery; they survive an agent restart. Must never: reorder batches, hold more than
//! its size cap (the oldest batches go first, and the caller counts them), or drop the batch
//! being delivered.
//!
//! One file per batch, `<seq:020>.<log type>`, written to a temporary name, synced and renamed,
//! so a crash leaves either the whole batch or none of it. Each item is one line:
//! `<key>\t<encoded record>`; keys and encoded records never hold a newline (JSON and CEF escape
//! it), and keys hold no tab.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::{Item, LogType};

/// A spool file operation failed.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {source}")]
pub struct SpoolError {
    /// File or directory.
    pub path: PathBuf,
    /// Cause.
    pub source: io::Error,
}

/// One sealed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    /// Position in delivery order.
    pub seq: u64,
    /// What the batch holds.
    pub log_type: LogType,
    /// File size.
    pub bytes: u64,
    /// Items in the batch.
    pub items: u64,
}

/// Batches dropped to keep under the cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Batches removed.
    pub batches: u64,
    /// Items in them.
    pub items: u64,
}

/// The spool directory of one exporter.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    batches: VecDeque<BatchMeta>,
    total_bytes: u64,
    next_seq: u64,
    in_flight: Option<u64>,
}

impl Spool {
    /// Opens (creating) `dir` and takes over the batches a previous process left, in order;
    /// half-written temporary files are removed. Drops the oldest batches if they pass the cap.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Dropped), SpoolError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError { path, source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(err(dir))?;
        let mut batches = Vec::new();
        for entry in fs::read_dir(dir).map_err(err(dir))? {
            let entry = entry.map_err(err(dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(err(&path))?;
                continue;
            }
            let Some((seq, kind)) = name.split_once('.') else { continue };
            let (Ok(seq), Some(log_type)) = (seq.parse::<u64>(), LogType::from_name(kind)) else { continue };
            let bytes = entry.metadata().map_err(err(&path))?.len();
            let items = fs::read(&path).map_err(err(&path))?.iter().filter(|&&b| b == b'\n').count() as u64;
            batches.push(BatchMeta { seq, log_type, bytes, items });
        }
        batches.sort_by_key(|b| b.seq);
        let next_seq = batches.last().map_or(1, |b| b.seq + 1);
        let total_bytes = batches.iter().map(|b| b.bytes).sum();
        let mut spool =
            Self { dir: dir.to_owned(), max_bytes, batches: batches.into(), total_bytes, next_seq, in_flight: None };
        let dropped = spool.enforce_cap()?;
        Ok((spool, dropped))
    }

    /// Seals `items` as the newest batch, then drops the oldest batches (never the one in
    /// delivery, never this one) while the spool passes its cap.
    pub fn push(&mut self, log_type: LogType, items: &[Item]) -> Result<Dropped, SpoolError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = self.write_batch(seq, log_type, items)?;
        self.batches.push_back(BatchMeta { seq, log_type, bytes, items: items.len() as u64 });
        self.total_bytes += bytes;
        self.enforce_cap()
    }

    /// The oldest batch, marked as being delivered (the cap will not drop it).
    pub fn take_front(&mut self) -> Option<BatchMeta> {
        let front = *self.batches.front()?;
        self.in_flight = Some(front.seq);
        Some(front)
    }

    /// Reads the items of a batch.
    pub fn read(&self, meta: &BatchMeta) -> Result<Vec<Item>, SpoolError> {
        let path = self.path(meta.seq, meta.log_type);
        let data = fs::read(&path).map_err(|source| SpoolError { path, source })?;
        Ok(parse_items(&data))
    }

    /// Delivery of the batch in flight ended: with `remaining` empty the batch is removed,
    /// otherwise its file is rewritten to hold only `remaining` (to be retried).
    pub fn finish(&mut self, meta: &BatchMeta, remaining: &[Item]) -> Result<(), SpoolError> {
        self.in_flight = None;
        let Some(pos) = self.batches.iter().position(|b| b.seq == meta.seq) else { return Ok(()) };
        let path = self.path(meta.seq, meta.log_type);
        let old = self.batches[pos].bytes;
        if remaining.is_empty() {
            match fs::remove_file(&path) {
                // Gone already (the directory was removed under us): forget it rather than
                // offering the same batch again forever.
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SpoolError { path, source });
                }
                _ => {}
            }
            self.batches.remove(pos);
            self.total_bytes -= old;
            return Ok(());
        }
        if remaining.len() as u64 == self.batches[pos].items {
            // Nothing was delivered: the file already holds exactly these items.
            return Ok(());
        }
        let bytes = self.write_batch(meta.seq, meta.log_type, remaining)?;
        self.batches[pos].bytes = bytes;
        self.batches[pos].items = remaining.len() as u64;
        self.total_bytes = self.total_bytes - old + bytes;
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Items held.
    pub fn items(&self) -> u64 {
        self.batches.iter().map(|b| b.items).sum()
    }

    /// Writes the batch file whole (temporary name, sync, rename); returns its size.
    fn write_batch(&self, seq: u64, log_type: LogType, items: &[Item]) -> Result<u64, SpoolError> {
        let path = self.path(seq, log_type);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let mut buf = Vec::with_capacity(items.iter().map(|i| i.key.len() + i.line.len() + 2).sum());
        for item in items {
            buf.extend_from_slice(item.key.as_bytes());
            buf.push(b'\t');
            buf.extend_from_slice(&item.line);
            buf.push(b'\n');
        }
        let write = || -> io::Result<()> {
            let mut f = File::options().create(true).write(true).truncate(true).mode(0o640).open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| SpoolError { path, source })?;
        Ok(buf.len() as u64)
    }

    fn path(&self, seq: u64, log_type: LogType) -> PathBuf {
        self.dir.join(format!("{seq:020}.{}", log_type.name()))
    }

    fn enforce_cap(&mut self) -> Result<Dropped, SpoolError> {
        let mut dropped = Dropped::default();
        while self.total_bytes > self.max_bytes && self.batches.len() > 1 {
            // The oldest that is not being delivered; the newest batch always stays.
            let pos = if Some(self.batches[0].seq) == self.in_flight { 1 } else { 0 };
            if pos == self.batches.len() - 1 {
                break;
            }
            let meta = self.batches.remove(pos).expect("in range");
            let path = self.path(meta.seq, meta.log_type);
            fs::remove_file(&path).map_err(|source| SpoolError { path, source })?;
            self.total_bytes -= meta.bytes;
            dropped.batches += 1;
            dropped.items += meta.items;
        }
        Ok(dropped)
    }
}

fn parse_items(data: &[u8]) -> Vec<Item> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match l.iter().position(|&b| b == b'\t') {
            Some(tab) => Item { key: String::from_utf8_lossy(&l[..tab]).into_owned(), line: l[tab + 1..].to_vec() },
            None => Item { key: String::new(), line: l.to_vec() },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(range: std::ops::Range<u32>) -> Vec<Item> {
        range.map(|n| Item { key: format!("k{n}"), line: format!("{{\"n\":{n}}}").into_bytes() }).collect()
    }

    #[test]
    fn batches_come_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(LogType::Flows, &items(0..3)).unwrap();
        s.push(LogType::Audit, &items(3..4)).unwrap();
        drop(s);
        fs::write(dir.path().join("00000000000000000009.tmp"), b"half").unwrap();
        let (mut s, dropped) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(dropped, Dropped::default());
        assert!(!dir.path().join("00000000000000000009.tmp").exists(), "a half-written batch is removed");
        assert_eq!((s.len(), s.items()), (2, 4));
        let first = s.take_front().unwrap();
        assert_eq!((first.seq, first.log_type), (1, LogType::Flows));
        assert_eq!(s.read(&first).unwrap(), items(0..3));
        s.finish(&first, &[]).unwrap();
        let second = s.take_front().unwrap();
        assert_eq!((second.seq, second.log_type), (2, LogType::Audit));
        s.push(LogType::Flows, &items(4..5)).unwrap();
        assert_eq!(s.read(&second).unwrap(), items(3..4));
        s.finish(&second, &[]).unwrap();
        assert_eq!(s.take_front().unwrap().seq, 3, "sequence numbers continue after a reopen");
    }

    #[test]
    fn a_partial_delivery_keeps_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(LogType::Flows, &items(0..4)).unwrap();
        let b = s.take_front().unwrap();
        let all = s.read(&b).unwrap();
        s.finish(&b, &all[2..]).unwrap();
        let b = s.take_front().unwrap();
        assert_eq!((b.seq, b.items), (1, 2));
        assert_eq!(s.read(&b).unwrap(), items(2..4));
        assert_eq!(s.bytes(), fs::metadata(dir.path().join("00000000000000000001.flows")).unwrap().len());
    }

    #[test]
    fn the_cap_drops_the_oldest_batches_but_not_the_one_in_delivery() {
        let dir = tempfile::tempdir().unwrap();
        // Batches 1-3 (items 10-39) have the same size; batch 0 (items 0-9) is smaller.
        let one = items(10..20).iter().map(|i| i.key.len() + i.line.len() + 2).sum::<usize>() as u64;
        let (mut s, _) = Spool::open(dir.path(), 3 * one).unwrap();
        for n in 1..4 {
            assert_eq!(s.push(LogType::Flows, &items(n * 10..n * 10 + 10)).unwrap(), Dropped::default());
        }
        let in_flight = s.take_front().unwrap();
        let d = s.push(LogType::Flows, &items(40..50)).unwrap();
        assert_eq!(d, Dropped { batches: 1, items: 10 });
        let seqs: Vec<u64> = s.batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, vec![1, 3, 4], "batch 2 went; batch 1 is being delivered");
        s.finish(&in_flight, &[]).unwrap();
        assert!(s.bytes() <= 3 * one);
        // Reopening with a smaller cap drops from the front.
        drop(s);
        let (s, d) = Spool::open(dir.path(), one).unwrap();
        assert_eq!(d, Dropped { batches: 1, items: 10 });
        assert_eq!(s.batches.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![4]);
    }
}
