//! The ClickHouse sink: flow records as rows of a MergeTree table, over ClickHouse's HTTP
//! interface (`INSERT ... FORMAT JSONEachRow`).
//!
//! Takes: a batch of calico-encoded flow records (flow-log lines). Gives: one insert per batch
//! into `database.table`, which it creates (database, table, missing columns) before its first
//! insert and again when the server says either is gone (the SQL is [`crate::clickhouse`]'s).
//! Must never: count as delivered a batch the server did not take (an insert of a batch is one
//! block: all of it or nothing), drop a row the server refused without naming it (the row it
//! names goes to the dead letters, the rest is inserted), or store anything but flows.

use std::{collections::VecDeque, fmt, time::Duration};

use reqwest::header::HeaderValue;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Outcome, SinkError};
use crate::{
    clickhouse::{self as ch, ErrorAnswer},
    output::export::{Item, LogType},
};

/// A ClickHouse table over HTTP.
pub struct ClickHouseSink {
    client: reqwest::Client,
    url: String,
    database: String,
    table: String,
    auth: Option<HeaderValue>,
    /// The database, table and columns are known to exist.
    ready: bool,
}

impl ClickHouseSink {
    /// A sink for `url` (`http(s)://HOST:PORT`); `auth` is the whole `Authorization` value.
    pub fn new(
        url: &str,
        database: &str,
        table: &str,
        auth: Option<String>,
        tls: std::sync::Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let client = super::http::client(tls, timeout)?;
        let auth = auth.map(|a| super::http::secret_header(&a)).transpose()?;
        Ok(Self {
            client,
            url: url.to_owned(),
            database: database.to_owned(),
            table: table.to_owned(),
            auth,
            ready: false,
        })
    }

    /// One statement, its text as the body (18.16 refuses a POST without a body); the
    /// answer's text on 200.
    async fn statement(&self, sql: &str) -> Result<String, SinkError> {
        self.request(&[], sql.as_bytes().to_vec()).await
    }

    /// One request: `params` in the URL (`query` for an insert, settings), `body` as the body;
    /// the answer's text on 200.
    async fn request(&self, params: &[(&str, &str)], body: Vec<u8>) -> Result<String, SinkError> {
        let url = reqwest::Url::parse_with_params(&self.url, params)
            .map_err(|e| SinkError::Config(format!("{}: {e}", self.url)))?;
        let mut req = self.client.post(url).body(body);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth.clone());
        }
        let resp = req.send().await.map_err(|e| SinkError::Transport(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| SinkError::Transport(format!("{}: {e}", self.url)))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(SinkError::Status { status: status.as_u16(), body: text.trim().chars().take(500).collect() })
        }
    }

    /// Creates the database and the table if missing, and adds the columns a table made by an
    /// older version lacks. A table that exists is not touched otherwise (no CREATE rights needed).
    async fn prepare(&mut self) -> Result<(), SinkError> {
        let (db, table) = (self.database.as_str(), self.table.as_str());
        let mut have = self.columns().await?;
        if have.is_empty() {
            self.statement(&ch::create_database(db)).await?;
            self.statement(&ch::create_table(db, table)).await?;
            tracing::info!(message = "ClickHouse table created (if it was missing).", database = db, table);
            have = self.columns().await?;
        }
        for (name, ty) in ch::COLUMNS {
            if !have.iter().any(|h| h == name) {
                self.statement(&ch::add_column(db, table, name, ty)).await?;
                tracing::info!(message = "ClickHouse column added.", database = db, table, column = name, r#type = ty);
            }
        }
        self.ready = true;
        Ok(())
    }

    async fn columns(&self) -> Result<Vec<String>, SinkError> {
        let text = self.statement(&ch::list_columns(&self.database, &self.table)).await?;
        Ok(text.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    /// Inserts one batch. A failure that names the content (a row that does not parse, a value
    /// the column refuses) is narrowed down to the rows at fault: the row the answer names is
    /// tried alone first, else the part is halved, until single rows are refused (they go to the
    /// dead letters) and the others are stored. Any other failure retries what is not stored yet.
    pub async fn send(&mut self, log_type: LogType, items: &[Item]) -> Result<Outcome, SinkError> {
        let mut outcome = Outcome::default();
        if log_type != LogType::Flows {
            // The configuration refuses other log types; a spool of another version may not.
            let reason = "type clickhouse stores flow records only".to_owned();
            outcome.rejected = (0..items.len()).map(|i| (i, reason.clone())).collect();
            return Ok(outcome);
        }
        if !self.ready {
            self.prepare().await?;
        }
        // Each item's row, or why it is not one.
        let mut buf = Vec::with_capacity(items.iter().map(|i| i.line.len() + 64).sum());
        let mut rows: Vec<Row> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let start = buf.len();
            match row(&item.line, &mut buf) {
                Ok(()) => {
                    buf.push(b'\n');
                    rows.push((i, start..buf.len()));
                }
                Err(e) => {
                    buf.truncate(start);
                    outcome.rejected.push((i, format!("not a JSON object: {e}")));
                }
            }
        }
        let query = ch::insert(&self.database, &self.table);
        let mut params = vec![("query", query.as_str())];
        params.extend_from_slice(ch::INSERT_SETTINGS);
        let whole = rows.len() == items.len();
        let mut parts: VecDeque<Vec<Row>> = VecDeque::from([rows]);
        let mut stored = 0;
        while let Some(mut part) = parts.pop_front() {
            if part.is_empty() {
                continue;
            }
            let body: Vec<u8> = if whole && stored == 0 && part.len() == items.len() {
                buf.clone()
            } else {
                part.iter().flat_map(|(_, r)| buf[r.clone()].iter().copied()).collect()
            };
            let error = match self.request(&params, body).await {
                Ok(_) => {
                    stored += part.len();
                    continue;
                }
                Err(error) => error,
            };
            let answer = match &error {
                SinkError::Status { body, .. } => ErrorAnswer::parse(body),
                _ => ErrorAnswer::parse(""),
            };
            if matches!(answer.code, Some(ch::UNKNOWN_TABLE | ch::UNKNOWN_DATABASE)) {
                self.ready = false;
            } else if answer.is_about_content() {
                if part.len() == 1 {
                    outcome.rejected.push((part[0].0, answer.message));
                } else if let Some(n) = answer.row.filter(|&n| n <= part.len()) {
                    let named = part.remove(n - 1);
                    parts.push_front(part);
                    parts.push_front(vec![named]);
                } else {
                    let second = part.split_off(part.len() / 2);
                    parts.push_front(second);
                    parts.push_front(part);
                }
                continue;
            }
            // Not about the rows: what is not stored yet is sent again after the backoff.
            if stored == 0 && outcome.rejected.is_empty() {
                return Err(error);
            }
            tracing::warn!(message = "ClickHouse insert failed after part of the batch was stored; retrying the rest.", table = %format!("{}.{}", self.database, self.table), %error);
            parts.push_front(part);
            outcome.retry = parts.iter().flatten().map(|(i, _)| *i).collect();
            outcome.retry.sort_unstable();
            break;
        }
        outcome.rejected.sort_unstable_by_key(|(i, _)| *i);
        Ok(outcome)
    }
}

/// An item's index and its row's bytes in the batch's buffer.
type Row = (usize, std::ops::Range<usize>);

/// Writes a flow-log line as a `JSONEachRow` row: the same fields, with each JSON object value
/// (labels, policies) as a string holding the object's JSON text, and `true`/`false` as 1/0, so
/// that ClickHouse 18.16 takes it. Streams the line: no tree is built.
pub fn row(line: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    struct RowVisitor<'o>(&'o mut Vec<u8>);
    impl<'de> Visitor<'de> for RowVisitor<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let out = self.0;
            out.push(b'{');
            let mut first = true;
            while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                if !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut *out, &*key.0).map_err(de::Error::custom)?;
                out.push(b':');
                let raw = value.get();
                match raw.as_bytes().first() {
                    Some(b'{') => serde_json::to_writer(&mut *out, raw).map_err(de::Error::custom)?,
                    Some(b't') if raw == "true" => out.push(b'1'),
                    Some(b'f') if raw == "false" => out.push(b'0'),
                    _ => out.extend_from_slice(raw.as_bytes()),
                }
            }
            out.push(b'}');
            Ok(())
        }
    }
    /// A key, borrowed from the line unless it has escapes.
    struct Key<'de>(std::borrow::Cow<'de, str>);
    impl<'de> de::Deserialize<'de> for Key<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(v.into()))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(v.to_owned().into()))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    de.deserialize_map(RowVisitor(out))?;
    de.end()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn converted(line: &str) -> Value {
        let mut out = Vec::new();
        row(line.as_bytes(), &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn objects_become_their_json_text_and_booleans_numbers() {
        let line = r#"{"id":"00ab","source_port":null,"source_labels":{"labels":["app=web","x=\"q\""]},"dest_labels":"-","policies":{"enforced_policies":["0|default|np:ns/a|allow|0"],"pending_policies":[]},"host_network":true,"num_flows":18446744073709551615,"k\u0065y":false}"#;
        assert_eq!(
            converted(line),
            json!({
                "id": "00ab",
                "source_port": null,
                "source_labels": r#"{"labels":["app=web","x=\"q\""]}"#,
                "dest_labels": "-",
                "policies": r#"{"enforced_policies":["0|default|np:ns/a|allow|0"],"pending_policies":[]}"#,
                "host_network": 1,
                "num_flows": 18446744073709551615u64,
                "key": 0,
            })
        );
    }

    #[test]
    fn a_record_converts_with_every_field() {
        let mut rec = crate::model::FlowRecord::sample("10.0.0.1", 1000, "fd00::2", 80);
        rec.source_labels = crate::model::RecordLabels::List(vec!["app=web".to_owned()].into());
        let line = serde_json::to_vec(&rec).unwrap();
        let v = {
            let mut out = Vec::new();
            row(&line, &mut out).unwrap();
            serde_json::from_slice::<Value>(&out).unwrap()
        };
        let original: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), original.as_object().unwrap().len());
        assert_eq!(v["source_labels"], json!(original["source_labels"].to_string()));
        assert_eq!(v["policies"], json!(original["policies"].to_string()));
        assert_eq!(v["dest_ip"], "fd00::2");
    }

    #[test]
    fn what_is_not_an_object_is_an_error() {
        for bad in ["[1]", "\"x\"", "{\"a\":1} trailing", "{\"a\":"] {
            assert!(row(bad.as_bytes(), &mut Vec::new()).is_err(), "{bad}");
        }
    }
}
