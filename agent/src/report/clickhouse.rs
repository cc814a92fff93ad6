//! `--store clickhouse://HOST:PORT/DB`: a cluster's flow records, as the `clickhouse` exporters
//! of its nodes wrote them, read for a report.
//!
//! Takes: the store URL (`clickhouse://[USER@]HOST[:PORT]/DATABASE[?table=NAME]`, ClickHouse's
//! HTTP interface, port 8123 by default; the user may also come from
//! `FLOWAUDIT_CLICKHOUSE_USER`, the password only from the file named by
//! `FLOWAUDIT_CLICKHOUSE_PASSWORD_FILE`) and a report's interval. Gives: the same [`FlowRow`]s
//! as the flow-log files the exporters were fed from, each record once (a batch stored twice
//! after a retried insert counts once), streamed as the server sends them. Must never: take a
//! password from the URL or the command line, print one, hold the whole answer in memory, or
//! skip a row it cannot read (it stops and names the row and the field).

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    time::Duration,
};

use super::{
    Progress, ReportError, TimeRange,
    flows::{FlowRow, FlowSource, parse_row},
};
use crate::clickhouse as ch;

/// Environment variable naming the ClickHouse user (when the URL names none).
pub const USER_ENV: &str = "FLOWAUDIT_CLICKHOUSE_USER";
/// Environment variable naming the file that holds the user's password.
pub const PASSWORD_FILE_ENV: &str = "FLOWAUDIT_CLICKHOUSE_PASSWORD_FILE";
/// The columns of a [`FlowRow`]: its fields as serde reads them (so the query selects exactly
/// what the rows need, also when `FlowRow` gains a field).
pub fn row_columns() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    /// A deserializer that only notes the field names `deserialize_struct` is given.
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields noted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = <FlowRow as serde::Deserialize>::deserialize(Probe(&mut fields));
    fields
}
/// Longest wait for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The flow-record table of a ClickHouse server.
#[derive(Clone)]
pub struct ClickHouseStore {
    /// `http://HOST:PORT/`.
    endpoint: String,
    /// What `describe` and errors show: the URL without user.
    shown: String,
    database: String,
    table: String,
    /// `Authorization` value (Basic), when a user is set.
    auth: Option<String>,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore").field("store", &self.shown).field("user", &self.auth.is_some()).finish()
    }
}

fn flag(url: &str, reason: impl std::fmt::Display) -> ReportError {
    ReportError::Flag { flag: "--store", reason: format!("{url:?}: {reason}") }
}

impl ClickHouseStore {
    /// Parses `--store`; the user and password from the environment (see the module's header).
    pub fn parse(url: &str) -> Result<Self, ReportError> {
        let user_env = std::env::var(USER_ENV).ok().filter(|u| !u.is_empty());
        let password_file = std::env::var_os(PASSWORD_FILE_ENV).filter(|p| !p.is_empty()).map(PathBuf::from);
        Self::parse_with(url, user_env, password_file)
    }

    /// [`ClickHouseStore::parse`] with the environment's values given.
    pub fn parse_with(url: &str, user: Option<String>, password_file: Option<PathBuf>) -> Result<Self, ReportError> {
        const FORM: &str = "use clickhouse://[USER@]HOST[:PORT]/DATABASE[?table=NAME]";
        let parsed = reqwest::Url::parse(url).map_err(|e| flag(url, format!("{e}; {FORM}")))?;
        if parsed.scheme() != "clickhouse" {
            return Err(flag(url, format!("the scheme must be clickhouse (ClickHouse's HTTP interface); {FORM}")));
        }
        if parsed.password().is_some() {
            return Err(flag(
                url,
                format!(
                    "a password in the URL would show in the process list: put it in a file named by {PASSWORD_FILE_ENV}"
                ),
            ));
        }
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| flag(url, format!("no host; {FORM}")))?;
        let port = parsed.port().unwrap_or(8123);
        let database = parsed.path().trim_start_matches('/');
        if database.is_empty() {
            return Err(flag(url, format!("no database; {FORM}")));
        }
        if !ch::is_identifier(database) {
            return Err(flag(
                url,
                format!("database {database:?}: use letters, digits and '_', not starting with a digit"),
            ));
        }
        let mut table = ch::DEFAULT_TABLE.to_owned();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "table" if ch::is_identifier(&value) => table = value.into_owned(),
                "table" => {
                    return Err(flag(
                        url,
                        format!("table {value:?}: use letters, digits and '_', not starting with a digit"),
                    ));
                }
                other => return Err(flag(url, format!("unknown parameter {other:?}: only table"))),
            }
        }
        if parsed.fragment().is_some() {
            return Err(flag(url, format!("a #fragment means nothing here; {FORM}")));
        }
        let user = Some(parsed.username()).filter(|u| !u.is_empty()).map(str::to_owned).or(user);
        let password = match &password_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                flag(url, format!("{PASSWORD_FILE_ENV}={}: cannot read the password: {e}", path.display()))
            })?),
            None => None,
        };
        let auth = match (user, password) {
            (None, None) => None,
            (user, password) => {
                use base64::Engine as _;
                let user = user.unwrap_or_else(|| "default".into());
                let password = password.as_deref().map(str::trim_end).unwrap_or_default();
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                ))
            }
        };
        // `host_str` keeps the brackets of an IPv6 address.
        let authority = format!("{host}:{port}");
        Ok(Self {
            endpoint: format!("http://{authority}/"),
            shown: format!("clickhouse://{authority}/{database}?table={table}"),
            database: database.to_owned(),
            table,
            auth,
        })
    }

    /// The query [`FlowSource::scan`] runs for `range`.
    pub fn query(&self, range: TimeRange) -> String {
        ch::select_overlapping(&self.database, &self.table, row_columns(), range.from.as_second(), range.to.as_second())
    }

    fn error(&self, field: impl Into<String>, reason: impl ToString) -> ReportError {
        ReportError::input(std::path::Path::new(&self.shown), field, reason)
    }

    /// Runs `sql` on a thread of its own (a current-thread runtime: the caller may be inside
    /// another) and hands the answer over in chunks as it arrives: an `Err` is the last message.
    fn stream(&self, sql: String) -> mpsc::Receiver<Result<Vec<u8>, String>> {
        let (tx, rx) = mpsc::sync_channel(16);
        let store = self.clone();
        std::thread::spawn(move || {
            let result = (|| -> Result<(), String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the runtime: {e}"))?;
                runtime.block_on(store.fetch(sql, &tx))
            })();
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        rx
    }

    async fn fetch(&self, sql: String, tx: &mpsc::SyncSender<Result<Vec<u8>, String>>) -> Result<(), String> {
        // Plain HTTP: the TLS provider is set only because the client wants one.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("flowaudit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse_with_params(&self.endpoint, ch::SELECT_SETTINGS).map_err(|e| e.to_string())?;
        let mut req = client.post(url).body(sql);
        if let Some(auth) = &self.auth {
            let mut value = reqwest::header::HeaderValue::from_str(auth)
                .map_err(|_| "the user or password is not a valid header")?;
            value.set_sensitive(true);
            req = req.header("authorization", value);
        }
        let mut resp = req.send().await.map_err(|e| format!("{}: {e}", self.endpoint))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("the server answered {status}: {}", ch::ErrorAnswer::parse(&text).message));
        }
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the answer: {e}"))? {
            if tx.send(Ok(chunk.to_vec())).is_err() {
                break; // The reader stopped.
            }
        }
        Ok(())
    }
}

impl FlowSource for ClickHouseStore {
    fn describe(&self) -> String {
        format!("ClickHouse table {}.{} at {}", self.database, self.table, self.shown)
    }

    fn scan(&self, range: TimeRange, visit: &mut dyn FnMut(FlowRow)) -> Result<u64, ReportError> {
        let chunks = self.stream(self.query(range));
        let mut progress = Progress::new(format!("reading {}", self.shown));
        let mut pending: Vec<u8> = Vec::new();
        let mut rows = 0u64;
        let mut line = |bytes: &[u8], rows: &mut u64| -> Result<(), ReportError> {
            *rows += 1;
            let text = std::str::from_utf8(bytes).map_err(|e| self.error(format!("row {rows}"), e))?;
            let row = parse_row(text).map_err(|(field, reason)| {
                if text.starts_with('{') {
                    self.error(format!("row {rows}{}{field}", if field.is_empty() { "" } else { ": " }), reason)
                } else {
                    // An error after the first rows comes as text at the end of the answer.
                    self.error(
                        format!("row {rows}"),
                        format!("the server failed: {}", ch::ErrorAnswer::parse(text).message),
                    )
                }
            })?;
            visit(row);
            Ok(())
        };
        for chunk in chunks {
            let chunk = chunk.map_err(|reason| self.error("-", reason))?;
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                let bytes = &pending[start..start + end];
                if !bytes.iter().all(u8::is_ascii_whitespace) {
                    line(bytes, &mut rows)?;
                }
                start += end + 1;
            }
            pending.drain(..start);
            progress.tick(rows, "rows");
        }
        if !pending.iter().all(u8::is_ascii_whitespace) {
            line(&pending, &mut rows)?;
        }
        progress.finish();
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: i64, to: i64) -> TimeRange {
        TimeRange { from: jiff::Timestamp::from_second(from).unwrap(), to: jiff::Timestamp::from_second(to).unwrap() }
    }

    #[test]
    fn a_store_url_gives_endpoint_database_table_and_user() {
        let s = ClickHouseStore::parse_with("clickhouse://ch.example:9123/netlogs?table=flows_v2", None, None).unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.database.as_str(), s.table.as_str(), s.auth.as_deref()),
            ("http://ch.example:9123/", "netlogs", "flows_v2", None)
        );
        assert_eq!(
            s.describe(),
            "ClickHouse table netlogs.flows_v2 at clickhouse://ch.example:9123/netlogs?table=flows_v2"
        );
        assert_eq!(
            s.query(range(100, 200)),
            format!(
                "SELECT {} FROM netlogs.flows_v2 WHERE start_time < 200 AND end_time > 100 \
                 LIMIT 1 BY host, start_time, id FORMAT JSONEachRow",
                row_columns().join(", ")
            )
        );
        let s = ClickHouseStore::parse_with("clickhouse://[::1]/fa", Some("env-user".into()), None).unwrap();
        assert_eq!((s.endpoint.as_str(), s.table.as_str()), ("http://[::1]:8123/", "flows"));
        // base64("env-user:")
        assert_eq!(s.auth.as_deref(), Some("Basic ZW52LXVzZXI6"));
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let s = ClickHouseStore::parse_with("clickhouse://reader@h:1/fa", Some("env-user".into()), Some(pw)).unwrap();
        // The URL's user wins; base64("reader:s3cret"); the password never shows.
        assert_eq!(s.auth.as_deref(), Some("Basic cmVhZGVyOnMzY3JldA=="));
        assert!(!format!("{s:?}{}", s.describe()).contains("s3cret"));
    }

    #[test]
    fn the_query_selects_every_field_of_a_row_and_each_is_a_column() {
        let fields = row_columns();
        assert_eq!(&fields[..4], ["start_time", "end_time", "action", "reporter"]);
        assert!(fields.contains(&"num_established") && fields.contains(&"dest_type"), "{fields:?}");
        for f in fields {
            assert!(ch::COLUMNS.iter().any(|(c, _)| c == f), "{f} is not a column of the table");
        }
    }

    #[test]
    fn a_bad_store_url_is_a_flag_error_saying_why() {
        let cases = [
            ("http://h:8123/fa", "the scheme must be clickhouse"),
            ("clickhouse://h:8123", "no database"),
            ("clickhouse://h:8123/", "no database"),
            ("clickhouse://h:8123/fa/x", "database \"fa/x\""),
            ("clickhouse://h:8123/fa?table=a-b", "table \"a-b\""),
            ("clickhouse://h:8123/fa?tables=x", "unknown parameter \"tables\""),
            ("clickhouse://u:pw@h:8123/fa", "a password in the URL"),
            ("clickhouse:///fa", "no host"),
            ("clickhouse://h:99999/fa", "invalid port"),
            ("h:8123/fa", "the scheme must be clickhouse"),
        ];
        for (url, reason) in cases {
            let e = ClickHouseStore::parse_with(url, None, None).unwrap_err();
            assert!(matches!(e, ReportError::Flag { flag: "--store", .. }), "{url}: {e}");
            assert!(e.to_string().contains(reason), "{url}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
        let e = ClickHouseStore::parse_with("clickhouse://h/fa", None, Some("/nonexistent/pw".into())).unwrap_err();
        assert!(e.to_string().contains("FLOWAUDIT_CLICKHOUSE_PASSWORD_FILE=/nonexistent/pw: cannot read"), "{e}");
    }

    #[test]
    fn an_unreachable_store_is_an_error_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = ClickHouseStore::parse_with(&format!("clickhouse://127.0.0.1:{port}/fa"), None, None).unwrap();
        let e = s.scan(range(0, 10), &mut |_| panic!("no rows")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("clickhouse://127.0.0.1:{port}/fa?table=flows: -: http://127.0.0.1:{port}/")),
            "{e}"
        );
    }
}
