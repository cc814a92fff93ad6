//! The flow records a report reads: from flow-log directories (one node's files) or from a
//! store that holds a cluster's (ClickHouse, `--store`).
//!
//! Takes: `flows.log*` files (the calico encoding, one JSON object per line, as the `file`
//! exporter writes them; `docs/flow-logs.md`) or a [`FlowSource`] of another kind. Gives:
//! [`FlowRow`]s, the fields the reports use, of every record whose interval overlaps the
//! report's. Must never: skip a line it cannot read (it stops and names the file, the line and
//! the field), or decide which reporter counts: that is the report's question (ingress: `dst`,
//! egress: `src`), so files and a store give the same rows.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{Progress, ReportError, TimeRange};

/// `action` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowAction {
    /// Allowed by the reporter's side.
    Allow,
    /// Denied by the reporter's side.
    Deny,
}

/// `reporter` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowReporter {
    /// The source's side.
    Src,
    /// The destination's side.
    Dst,
    /// Traffic that only passed through the node.
    Fwd,
}

/// One end of a record, as the flow log names it (`-` for none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowEnd {
    /// `*_name`: pod, host endpoint or network set name, or `-`.
    pub name: String,
    /// `*_name_aggr`: generateName + `*`, the name, or `pvt`/`pub`.
    pub name_aggr: String,
    /// `*_namespace`, or `-`.
    pub namespace: String,
    /// `*_type`: `wep`, `hep`, `ns` or `net`.
    pub kind: String,
}

/// The fields of a flow record the reports read (the flow log's names; every other field of the
/// line is ignored). A store returns the same fields under the same names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FlowRow {
    /// Interval start, Unix seconds.
    pub start_time: u64,
    /// Interval end, Unix seconds.
    pub end_time: u64,
    /// The reporter's verdict.
    pub action: RowAction,
    /// Whose side.
    pub reporter: RowReporter,
    /// `source_name`.
    pub source_name: String,
    /// `source_name_aggr`.
    pub source_name_aggr: String,
    /// `source_namespace`.
    pub source_namespace: String,
    /// `source_type`.
    pub source_type: String,
    /// `dest_name`.
    pub dest_name: String,
    /// `dest_name_aggr`.
    pub dest_name_aggr: String,
    /// `dest_namespace`.
    pub dest_namespace: String,
    /// `dest_type`.
    pub dest_type: String,
    /// Packets the reporting end received.
    pub packets_in: u64,
    /// Packets the reporting end sent.
    pub packets_out: u64,
    /// Connections in the record.
    pub num_flows: u64,
    /// Connections whose enforcement is `violation`.
    pub num_violations: u64,
    /// Connections that completed a handshake or saw replies.
    pub num_established: u64,
    /// Connections that only attempted (a SYN or echo request without answer).
    pub num_attempted: u64,
    /// Connections refused by RST or ICMP unreachable.
    pub num_rejected: u64,
}

impl FlowRow {
    /// The source end.
    pub fn source(&self) -> RowEnd {
        RowEnd {
            name: self.source_name.clone(),
            name_aggr: self.source_name_aggr.clone(),
            namespace: self.source_namespace.clone(),
            kind: self.source_type.clone(),
        }
    }

    /// The destination end.
    pub fn dest(&self) -> RowEnd {
        RowEnd {
            name: self.dest_name.clone(),
            name_aggr: self.dest_name_aggr.clone(),
            namespace: self.dest_namespace.clone(),
            kind: self.dest_type.clone(),
        }
    }

    /// Whether the record's interval `[start_time, end_time)` overlaps `range`.
    pub fn overlaps(&self, range: &TimeRange) -> bool {
        let (from, to) = (range.from.as_second(), range.to.as_second());
        i64::try_from(self.start_time).is_ok_and(|s| s < to) && i64::try_from(self.end_time).is_ok_and(|e| e > from)
    }
}

/// Where a report's flow records come from.
pub trait FlowSource {
    /// What it reads, for messages: `flow-log directory /var/log/flowaudit`.
    fn describe(&self) -> String;

    /// Calls `visit` with every record whose interval overlaps `range` (both reporters, both
    /// actions); gives how many were visited.
    fn scan(&self, range: TimeRange, visit: &mut dyn FnMut(FlowRow)) -> Result<u64, ReportError>;
}

/// `--flow-log-dir DIR ...`: the `flows.log*` files of each directory (rotated ones included;
/// the `chain/` directory and `chain-heads.log` are not flow logs).
#[derive(Clone, Debug)]
pub struct FlowLogDirs(pub Vec<PathBuf>);

impl FlowLogDirs {
    /// The flow-log files of every directory, each directory's oldest first.
    pub fn files(&self) -> Result<Vec<PathBuf>, ReportError> {
        let mut all = Vec::new();
        for dir in &self.0 {
            let entries = std::fs::read_dir(dir).map_err(|e| ReportError::input(dir, "-", e))?;
            let mut files = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| ReportError::input(dir, "-", e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let rotation = match name.strip_prefix("flows.log") {
                    Some("") => 0,
                    Some(rest) => match rest.strip_prefix('.').and_then(|n| n.parse::<u32>().ok()) {
                        Some(n) => n,
                        None => continue,
                    },
                    None => continue,
                };
                files.push((rotation, entry.path()));
            }
            if files.is_empty() {
                return Err(ReportError::input(dir, "-", "holds no flows.log file"));
            }
            // flows.log.N is older than flows.log.N-1; flows.log is the newest.
            files.sort_by_key(|f| std::cmp::Reverse(f.0));
            all.extend(files.into_iter().map(|(_, p)| p));
        }
        Ok(all)
    }
}

/// Reads one flow-log file: every line a [`FlowRow`] (blank lines are skipped); an error names
/// the file, the line and the field.
pub fn read_file(path: &Path, range: TimeRange, visit: &mut dyn FnMut(FlowRow)) -> Result<u64, ReportError> {
    let file = std::fs::File::open(path).map_err(|e| ReportError::input(path, "-", e))?;
    let mut progress = Progress::new(format!("reading {}", path.display()));
    let mut visited = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ReportError::input(path, format!("line {}", i + 1), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(&line).map_err(|(field, reason)| {
            ReportError::input(
                path,
                format!("line {}{}{field}", i + 1, if field.is_empty() { "" } else { ": " }),
                reason,
            )
        })?;
        progress.tick(i as u64 + 1, "lines");
        if row.overlaps(&range) {
            visited += 1;
            visit(row);
        }
    }
    progress.finish();
    Ok(visited)
}

/// One JSON line → a row, or (the field, why).
pub fn parse_row(line: &str) -> Result<FlowRow, (String, String)> {
    let mut de = serde_json::Deserializer::from_str(line);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        (if path == "." { String::new() } else { path }, e.into_inner().to_string())
    })
}

impl FlowSource for FlowLogDirs {
    fn describe(&self) -> String {
        let dirs: Vec<String> = self.0.iter().map(|d| d.display().to_string()).collect();
        format!("flow-log directories {}", dirs.join(", "))
    }

    fn scan(&self, range: TimeRange, visit: &mut dyn FnMut(FlowRow)) -> Result<u64, ReportError> {
        let mut visited = 0;
        for file in self.files()? {
            visited += read_file(&file, range, visit)?;
        }
        Ok(visited)
    }
}

/// `--store URL`: the flow records of a cluster in a store, as the nodes' exporters wrote them.
/// Only `clickhouse://HOST:PORT/DATABASE[?table=NAME]` ([`super::clickhouse::ClickHouseStore`]);
/// a bad URL is a [`ReportError::Flag`] naming `--store` and why. Nothing is read until `scan`.
pub fn open_store(url: &str) -> Result<Box<dyn FlowSource>, ReportError> {
    Ok(Box::new(super::clickhouse::ClickHouseStore::parse(url)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id":"1","start_time":100,"end_time":115,"host":"n","action":"deny","reporter":"dst","proto":"tcp","source_ip":"10.0.0.1","source_port":null,"source_name":"-","source_name_aggr":"web-7d*","source_namespace":"shop","source_type":"wep","source_labels":"-","dest_ip":"10.0.0.2","dest_port":80,"dest_name":"db-0","dest_name_aggr":"db-0","dest_namespace":"data","dest_type":"wep","dest_labels":"-","bytes_in":1,"bytes_out":2,"packets_in":3,"packets_out":4,"num_flows":5,"num_flows_started":5,"num_flows_completed":0,"num_violations":2,"num_established":2,"num_attempted":3,"num_rejected":0,"observed":"mixed"}"#;

    fn range(from: i64, to: i64) -> TimeRange {
        TimeRange { from: jiff::Timestamp::from_second(from).unwrap(), to: jiff::Timestamp::from_second(to).unwrap() }
    }

    #[test]
    fn a_line_reads_and_overlaps_by_interval() {
        let row = parse_row(LINE).unwrap();
        assert_eq!((row.action, row.reporter), (RowAction::Deny, RowReporter::Dst));
        assert_eq!(row.source().name_aggr, "web-7d*");
        assert_eq!(row.dest().name, "db-0");
        assert_eq!((row.num_flows, row.num_violations, row.packets_in), (5, 2, 3));
        assert!(row.overlaps(&range(114, 200)));
        assert!(!row.overlaps(&range(115, 200)), "end_time is excluded");
        assert!(row.overlaps(&range(0, 101)));
        assert!(!row.overlaps(&range(0, 100)), "the report's end is excluded");
    }

    #[test]
    fn a_bad_line_names_the_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let bad = LINE.replace(r#""reporter":"dst""#, r#""reporter":"up""#);
        std::fs::write(dir.path().join("flows.log"), format!("{LINE}\n\n{bad}\n")).unwrap();
        let e = FlowLogDirs(vec![dir.path().into()]).scan(range(0, 1000), &mut |_| {}).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{}: line 3: reporter: unknown variant `up`",
                dir.path().join("flows.log").display()
            )),
            "{text}"
        );
        assert_eq!(e.exit_code(), 2);
        let missing = LINE.replace(r#""num_violations":2,"#, "");
        std::fs::write(dir.path().join("flows.log"), missing).unwrap();
        let e = FlowLogDirs(vec![dir.path().into()]).scan(range(0, 1000), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("line 1: missing field `num_violations`"), "{e}");
    }

    #[test]
    fn rotated_files_are_read_oldest_first_and_chains_are_not_flow_logs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, start) in [("flows.log", 300), ("flows.log.1", 200), ("flows.log.2", 100), ("chain-heads.log", 0)] {
            let line = LINE.replace(r#""start_time":100"#, &format!(r#""start_time":{start}"#));
            std::fs::write(dir.path().join(name), line).unwrap();
        }
        std::fs::create_dir(dir.path().join("chain")).unwrap();
        std::fs::write(dir.path().join("chain/flows.log.chain"), "not json").unwrap();
        let mut starts = Vec::new();
        let n = FlowLogDirs(vec![dir.path().into()]).scan(range(0, 1000), &mut |r| starts.push(r.start_time)).unwrap();
        assert_eq!((n, starts), (3, vec![100, 200, 300]));
        let empty = tempfile::tempdir().unwrap();
        let e = FlowLogDirs(vec![empty.path().into()]).scan(range(0, 1000), &mut |_| {}).unwrap_err();
        assert!(e.to_string().ends_with("holds no flows.log file"), "{e}");
    }
}
