//! ClickHouse's table of flow records: what the `clickhouse` exporter writes and
//! `flowaudit report --store clickhouse://` reads, in one place.
//!
//! Takes: a database and a table name, ClickHouse's answers. Gives: the table's columns (one per
//! flow-log field, `docs/flow-logs.md`), the SQL that creates, extends and reads it, and what an
//! error answer says (code, row). Must never: do I/O, or write SQL that ClickHouse 18.16
//! (Debian 12's package, which the tests run) or a current release refuses: no `IF NOT EXISTS`
//! on columns, no `TTL`, no settings 18.16 does not know, no JSON functions.

use std::fmt::Write as _;

/// The database the exporter writes when its entry names none.
pub const DEFAULT_DATABASE: &str = "flowaudit";
/// The table of flow records when none is named.
pub const DEFAULT_TABLE: &str = "flows";
/// ClickHouse's code for a table that does not exist.
pub const UNKNOWN_TABLE: u32 = 60;
/// ClickHouse's code for a database that does not exist.
pub const UNKNOWN_DATABASE: u32 = 81;

/// The columns, in the flow log's field order: (name, type).
///
/// Counters are `UInt64`; names, verdicts and the record id are `String`; fields the flow log
/// writes as `null` (addresses and ports) or leaves out (ICMP type and code, the cgroup id) are
/// `Nullable`; `host_network` (written only when true) is `UInt8`, 0 when absent. The JSON
/// objects of a record (`source_labels`, `dest_labels` when not `-`, `policies`) are `String`
/// columns holding the object's JSON text as the flow log writes it: 18.16's `JSONEachRow`
/// refuses an object for any column type, and the text keeps the record exact.
pub const COLUMNS: &[(&str, &str)] = &[
    ("id", "String"),
    ("start_time", "UInt64"),
    ("end_time", "UInt64"),
    ("host", "String"),
    ("action", "String"),
    ("reporter", "String"),
    ("proto", "String"),
    ("source_ip", "Nullable(String)"),
    ("source_port", "Nullable(UInt16)"),
    ("source_name", "String"),
    ("source_name_aggr", "String"),
    ("source_namespace", "String"),
    ("source_type", "String"),
    ("source_labels", "String"),
    ("dest_ip", "Nullable(String)"),
    ("dest_port", "Nullable(UInt16)"),
    ("dest_name", "String"),
    ("dest_name_aggr", "String"),
    ("dest_namespace", "String"),
    ("dest_type", "String"),
    ("dest_labels", "String"),
    ("dest_service_name", "String"),
    ("dest_service_namespace", "String"),
    ("dest_service_port", "String"),
    ("icmp_type", "Nullable(UInt8)"),
    ("icmp_code", "Nullable(UInt8)"),
    ("bytes_in", "UInt64"),
    ("bytes_out", "UInt64"),
    ("packets_in", "UInt64"),
    ("packets_out", "UInt64"),
    ("num_flows", "UInt64"),
    ("num_flows_started", "UInt64"),
    ("num_flows_completed", "UInt64"),
    ("policies", "String"),
    ("pending_action", "String"),
    ("flow_action", "String"),
    ("enforcement", "String"),
    ("num_violations", "UInt64"),
    ("observed", "String"),
    ("num_established", "UInt64"),
    ("num_attempted", "UInt64"),
    ("num_rejected", "UInt64"),
    ("source_cgroup_id", "Nullable(UInt64)"),
    ("host_network", "UInt8"),
];

/// A database or table name flowaudit accepts: a letter or `_`, then letters, digits and `_`,
/// at most 64 characters (so it never needs quoting).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// `CREATE DATABASE IF NOT EXISTS db`.
pub fn create_database(db: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {db}")
}

/// The table: a MergeTree partitioned by the UTC day of `end_time` and sorted by `start_time`,
/// so a query for records overlapping `[from, to)` reads only the days from `from` on
/// (partition pruning on `end_time > from`) and only the granules before `to` (the primary key on
/// `start_time < to`). Dropping a day is `ALTER TABLE ... DROP PARTITION YYYYMMDD`.
pub fn create_table(db: &str, table: &str) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {db}.{table} (");
    for (i, (name, ty)) in COLUMNS.iter().enumerate() {
        let _ = write!(sql, "{}{name} {ty}", if i == 0 { "" } else { ", " });
    }
    sql.push_str(
        ") ENGINE = MergeTree() PARTITION BY toYYYYMMDD(toDateTime(end_time, 'UTC')) ORDER BY (start_time, host, id)",
    );
    sql
}

/// The columns the table has, one name per line.
pub fn list_columns(db: &str, table: &str) -> String {
    format!("SELECT name FROM system.columns WHERE database = '{db}' AND table = '{table}' FORMAT TabSeparated")
}

/// Adds a column (one a newer version of the record has); older rows read its default.
pub fn add_column(db: &str, table: &str, name: &str, ty: &str) -> String {
    format!("ALTER TABLE {db}.{table} ADD COLUMN {name} {ty}")
}

/// The insert; the rows follow as the request body. Unknown fields are skipped (settings go in
/// the URL: see [`INSERT_SETTINGS`]).
pub fn insert(db: &str, table: &str) -> String {
    format!("INSERT INTO {db}.{table} FORMAT JSONEachRow")
}

/// URL parameters of an insert: a record with fields the table lacks (a newer agent before the
/// exporter added the columns) is stored without them rather than refused.
pub const INSERT_SETTINGS: &[(&str, &str)] = &[("input_format_skip_unknown_fields", "1")];

/// URL parameters of a select: 64-bit integers as JSON numbers (18.16 and current releases
/// quote them by default).
pub const SELECT_SETTINGS: &[(&str, &str)] = &[("output_format_json_quote_64bit_integers", "0")];

/// The records whose interval `[start_time, end_time)` overlaps `[from, to)` (Unix seconds), the
/// `columns` of each, one JSON object per line, each record once: a batch the exporter sent again
/// after a lost answer is stored twice, and `LIMIT 1 BY` keeps one row per (host, start_time,
/// id). The server holds the set of keys of the range while it runs (about 40 bytes a row).
pub fn select_overlapping(db: &str, table: &str, columns: &[&str], from: i64, to: i64) -> String {
    format!(
        "SELECT {} FROM {db}.{table} WHERE start_time < {to} AND end_time > {from} LIMIT 1 BY host, start_time, id FORMAT JSONEachRow",
        columns.join(", ")
    )
}

/// What an error answer of ClickHouse says: `Code: 27, e.displayText() = DB::Exception: Cannot
/// parse input: ... (at row 2)` (18.16) or `Code: 27. DB::Exception: ... (at row 2) ...
/// (CANNOT_PARSE_INPUT_ASSERTION_FAILED) (version ...)` (current).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorAnswer {
    /// The exception code.
    pub code: Option<u32>,
    /// The row of the request body it names, 1-based.
    pub row: Option<usize>,
    /// The text, trimmed to 500 characters.
    pub message: String,
}

/// Exception codes that mean "this data does not fit the table": a value that does not parse or
/// that its column refuses. Retrying the same rows cannot help. (Codes are stable across
/// releases; 49 is what 18.16 throws for a value that is not an element of an `Enum`, 691 what
/// current releases throw.)
pub const CONTENT_ERRORS: &[u32] = &[6, 25, 26, 27, 38, 41, 49, 53, 69, 70, 72, 117, 131, 321, 349, 691];

impl ErrorAnswer {
    /// Whether the answer blames the data (a row is named, or the code is one of
    /// [`CONTENT_ERRORS`]) rather than the server or the table.
    pub fn is_about_content(&self) -> bool {
        self.row.is_some() || self.code.is_some_and(|c| CONTENT_ERRORS.contains(&c))
    }

    /// Reads an answer's body.
    pub fn parse(body: &str) -> Self {
        let number_after = |marker: &str| -> Option<u64> {
            let rest = &body[body.find(marker)? + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Self {
            code: number_after("Code: ").and_then(|c| u32::try_from(c).ok()),
            row: number_after("(at row ").and_then(|r| usize::try_from(r).ok()).filter(|&r| r > 0),
            message: body.trim().chars().take(500).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FlowRecord;

    #[test]
    fn the_columns_are_the_fields_of_a_record_in_order() {
        let mut rec = FlowRecord::sample("10.0.0.1", 1000, "10.0.0.2", 80);
        // The fields written only sometimes.
        rec.icmp_type = Some(8);
        rec.icmp_code = Some(0);
        rec.source_cgroup_id = Some(7);
        rec.host_network = true;
        let line = serde_json::to_string(&rec).unwrap();
        let de: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
        let fields: Vec<&str> = de.keys().map(String::as_str).collect();
        let mut names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        // serde_json's map is ordered by key; compare as sets, and the order by the line.
        names.sort_unstable();
        assert_eq!(fields, names);
        let order: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        let positions: Vec<usize> = order.iter().map(|n| line.find(&format!("\"{n}\":")).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "COLUMNS follow the flow log's field order");
    }

    #[test]
    fn sql_is_the_documented_text() {
        assert_eq!(create_database("fa"), "CREATE DATABASE IF NOT EXISTS fa");
        let table = create_table("fa", "flows");
        assert!(table.starts_with("CREATE TABLE IF NOT EXISTS fa.flows (id String, start_time UInt64, "), "{table}");
        assert!(table.ends_with(", host_network UInt8) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(toDateTime(end_time, 'UTC')) ORDER BY (start_time, host, id)"), "{table}");
        assert_eq!(
            select_overlapping("fa", "flows", &["start_time", "end_time"], 100, 200),
            "SELECT start_time, end_time FROM fa.flows WHERE start_time < 200 AND end_time > 100 \
             LIMIT 1 BY host, start_time, id FORMAT JSONEachRow"
        );
        assert_eq!(add_column("fa", "t", "x", "UInt8"), "ALTER TABLE fa.t ADD COLUMN x UInt8");
    }

    #[test]
    fn identifiers_need_no_quoting() {
        for ok in ["flows", "_x", "flowaudit_2", "A1"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "1flows", "flows-1", "db.t", "x y", "a'b", &"x".repeat(65)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn error_answers_of_old_and_new_servers_give_code_and_row() {
        let old = "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected , before: {\"a\":1}}: (at row 2)\n, e.what() = DB::Exception\n";
        assert_eq!(
            ErrorAnswer::parse(old),
            ErrorAnswer { code: Some(27), row: Some(2), message: old.trim().to_owned() }
        );
        let new = "Code: 60. DB::Exception: Table fa.flows does not exist. (UNKNOWN_TABLE) (version 24.8.4.13 (official build))";
        let a = ErrorAnswer::parse(new);
        assert_eq!((a.code, a.row, a.is_about_content()), (Some(UNKNOWN_TABLE), None, false));
        assert!(ErrorAnswer::parse(old).is_about_content());
        let enum_18 = "Code: 49, e.displayText() = DB::Exception: Unknown element 'icmp' for type Enum8('tcp' = 1): (while read the value of key proto), e.what() = DB::Exception";
        assert!(ErrorAnswer::parse(enum_18).is_about_content());
        assert!(
            !ErrorAnswer::parse("Code: 252, e.displayText() = DB::Exception: Too many parts (300)").is_about_content()
        );
        assert_eq!(
            ErrorAnswer::parse("Bad Gateway"),
            ErrorAnswer { code: None, row: None, message: "Bad Gateway".into() }
        );
    }
}
