//! The HTTP sinks: Elasticsearch/OpenSearch `_bulk`, Splunk HEC, OTLP/HTTP logs (JSON).
//!
//! Takes: a batch of encoded records. Gives: one request per batch, and per-item results where
//! the API has them (`_bulk`). Must never: count as delivered an item the server did not accept,
//! or drop one for an answer that may pass on retry (429, 5xx, 401/403/404: a misconfigured or
//! restarting endpoint is retried, not dropped).

use std::time::Duration;

use reqwest::{StatusCode, header::HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Outcome, SinkError};
use crate::output::export::{Item, LogType};

/// Which API.
pub enum HttpApi {
    /// `POST <url>/_bulk`, action `index` with a content-derived `_id`, so a retried item
    /// overwrites itself instead of duplicating.
    Elasticsearch {
        /// Index pattern of flows (strftime, UTC, send time).
        index: String,
        /// Index pattern of audit events.
        audit_index: String,
        /// Index pattern of report rows.
        report_index: String,
    },
    /// `POST <url>/services/collector/event`.
    Splunk {
        /// HEC index.
        index: Option<String>,
        /// Sourcetype.
        sourcetype: String,
        /// This node.
        host: String,
    },
    /// `POST <url>/v1/logs`.
    Otlp {
        /// This node.
        host: String,
    },
}

/// An HTTP sink.
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    auth: Option<HeaderValue>,
    api: HttpApi,
}

impl HttpSink {
    /// A sink; `auth` is the whole `Authorization` header value, read from a secret file.
    pub fn new(
        url: &str,
        api: HttpApi,
        auth: Option<String>,
        tls: std::sync::Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let client = client(tls, timeout)?;
        let auth = auth.map(|a| secret_header(&a)).transpose()?;
        let url = match &api {
            HttpApi::Elasticsearch { .. } => format!("{url}/_bulk"),
            HttpApi::Splunk { .. } if !url.ends_with("/services/collector/event") => {
                format!("{url}/services/collector/event")
            }
            HttpApi::Otlp { .. } if !url.ends_with("/v1/logs") => format!("{url}/v1/logs"),
            _ => url.to_owned(),
        };
        Ok(Self { client, url, auth, api })
    }

    /// Sends one batch.
    pub async fn send(&mut self, log_type: LogType, items: &[Item]) -> Result<Outcome, SinkError> {
        let (body, content_type) = match &self.api {
            HttpApi::Elasticsearch { index, audit_index, report_index } => {
                let pattern = match log_type {
                    LogType::Flows => index,
                    LogType::Audit => audit_index,
                    LogType::Reports => report_index,
                };
                (bulk_body(pattern, items)?, "application/x-ndjson")
            }
            HttpApi::Splunk { index, sourcetype, host } => {
                (hec_body(index, sourcetype, host, items), "application/json")
            }
            HttpApi::Otlp { host } => (otlp_body(host, log_type, items), "application/json"),
        };
        let mut req = self.client.post(&self.url).header("content-type", content_type).body(body);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth.clone());
        }
        let resp = req.send().await.map_err(|e| SinkError::Transport(format!("{}: {e}", self.url)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| SinkError::Transport(format!("{}: {e}", self.url)))?;
        if retryable(status) {
            return Err(SinkError::Status { status: status.as_u16(), body: text.chars().take(300).collect() });
        }
        if !status.is_success() {
            // Refused for its content: every item goes to the dead letters.
            let reason = format!("{status}: {}", text.chars().take(300).collect::<String>());
            return Ok(Outcome {
                rejected: (0..items.len()).map(|i| (i, reason.clone())).collect(),
                ..Default::default()
            });
        }
        match self.api {
            HttpApi::Elasticsearch { .. } => bulk_outcome(&text, items.len()),
            _ => Ok(Outcome::default()),
        }
    }
}

/// The HTTP client of a sink: the exporter's TLS settings and send deadline.
pub(super) fn client(
    tls: std::sync::Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<reqwest::Client, SinkError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(timeout)
        .user_agent(concat!("flowaudit/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SinkError::Config(e.to_string()))
}

/// An `Authorization` value read from a secret file, marked sensitive (never logged).
pub(super) fn secret_header(value: &str) -> Result<HeaderValue, SinkError> {
    let mut v =
        HeaderValue::from_str(value).map_err(|_| SinkError::Config("the secret is not a valid header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || matches!(status.as_u16(), 401 | 403 | 404 | 408)
}

/// A stable document id: the same record sent twice is one document.
fn doc_id(line: &[u8]) -> String {
    let digest = Sha256::digest(line);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

fn bulk_body(pattern: &str, items: &[Item]) -> Result<Vec<u8>, SinkError> {
    let index = jiff::Timestamp::now().strftime(pattern).to_string();
    let mut body = Vec::with_capacity(items.iter().map(|i| i.line.len() + 96).sum());
    for item in items {
        serde_json::to_writer(&mut body, &json!({"index": {"_index": index, "_id": doc_id(&item.line)}}))
            .map_err(|e| SinkError::Config(e.to_string()))?;
        body.push(b'\n');
        body.extend_from_slice(&item.line);
        body.push(b'\n');
    }
    Ok(body)
}

/// Per-item results of `_bulk`: 429 and 5xx items are retried, other failures refused.
fn bulk_outcome(text: &str, n: usize) -> Result<Outcome, SinkError> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        SinkError::Transport(format!("_bulk answer is not JSON ({e}): {}", text.chars().take(200).collect::<String>()))
    })?;
    let mut outcome = Outcome::default();
    if v.get("errors").and_then(Value::as_bool) != Some(true) {
        return Ok(outcome);
    }
    let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    if items.len() != n {
        return Err(SinkError::Transport(format!("_bulk answered {} items for {n}", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        let Some(result) = item.as_object().and_then(|o| o.values().next()) else { continue };
        let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
        if status == 429 || status >= 500 {
            outcome.retry.push(i);
        } else if status >= 300 {
            let reason = result.get("error").map(|e| e.to_string()).unwrap_or_else(|| format!("status {status}"));
            outcome.rejected.push((i, format!("{status}: {reason}")));
        }
    }
    Ok(outcome)
}

fn hec_body(index: &Option<String>, sourcetype: &str, host: &str, items: &[Item]) -> Vec<u8> {
    let mut body = Vec::new();
    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    for item in items {
        let event = serde_json::from_slice::<Value>(&item.line)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&item.line).into_owned()));
        let mut e = json!({"time": now, "host": host, "source": "flowaudit", "sourcetype": sourcetype, "event": event});
        if let Some(index) = index {
            e["index"] = json!(index);
        }
        let _ = serde_json::to_writer(&mut body, &e);
        body.push(b'\n');
    }
    body
}

/// Writes `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes the OTLP attributes of a JSON value's fields, flattened with dots, each preceded by a
/// comma. Written straight into the request body: no intermediate JSON tree per record.
fn attributes(prefix: &mut String, v: &Value, out: &mut Vec<u8>) {
    let attr = |out: &mut Vec<u8>, kind: &str, write: &dyn Fn(&mut Vec<u8>)| {
        out.extend_from_slice(b",{\"key\":");
        json_str(out, prefix);
        out.extend_from_slice(b",\"value\":{\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\":");
        write(out);
        out.extend_from_slice(b"}}");
    };
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let len = prefix.len();
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(k);
                attributes(prefix, v, out);
                prefix.truncate(len);
            }
        }
        Value::Null => {}
        Value::Bool(b) => attr(out, "boolValue", &|o| o.extend_from_slice(if *b { b"true" } else { b"false" })),
        Value::Number(n) if n.is_i64() || n.is_u64() => attr(out, "intValue", &|o| json_str(o, &n.to_string())),
        Value::Number(n) => attr(out, "doubleValue", &|o| o.extend_from_slice(n.to_string().as_bytes())),
        Value::String(s) => attr(out, "stringValue", &|o| json_str(o, s)),
        Value::Array(_) => attr(out, "stringValue", &|o| json_str(o, &v.to_string())),
    }
}

/// The OTLP/HTTP JSON request of a batch: one log record per item, the item as the body and its
/// JSON fields (when it is JSON) as attributes.
fn otlp_body(host: &str, log_type: LogType, items: &[Item]) -> Vec<u8> {
    let observed = jiff::Timestamp::now().as_nanosecond().to_string();
    let mut out = Vec::with_capacity(items.iter().map(|i| i.line.len() * 4 + 256).sum::<usize>() + 512);
    out.extend_from_slice(b"{\"resourceLogs\":[{\"resource\":{\"attributes\":[");
    out.extend_from_slice(b"{\"key\":\"service.name\",\"value\":{\"stringValue\":\"flowaudit\"}},");
    out.extend_from_slice(b"{\"key\":\"host.name\",\"value\":{\"stringValue\":");
    json_str(&mut out, host);
    out.extend_from_slice(b"}}]},\"scopeLogs\":[{\"scope\":{\"name\":\"flowaudit\",\"version\":");
    json_str(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"logRecords\":[");
    let mut prefix = String::new();
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let parsed = serde_json::from_slice::<Value>(&item.line).ok();
        out.extend_from_slice(b"{\"observedTimeUnixNano\":");
        json_str(&mut out, &observed);
        if let Some(t) = parsed.as_ref().and_then(|v| v.get("end_time")).and_then(Value::as_u64) {
            out.extend_from_slice(b",\"timeUnixNano\":");
            json_str(&mut out, &(u128::from(t) * 1_000_000_000).to_string());
        }
        out.extend_from_slice(b",\"severityNumber\":9,\"severityText\":\"INFO\",\"body\":{\"stringValue\":");
        json_str(&mut out, &String::from_utf8_lossy(&item.line));
        out.extend_from_slice(b"},\"attributes\":[{\"key\":\"log.type\",\"value\":{\"stringValue\":\"");
        out.extend_from_slice(log_type.name().as_bytes());
        out.extend_from_slice(b"\"}}");
        if let Some(v) = &parsed {
            prefix.clear();
            attributes(&mut prefix, v, &mut out);
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(line: &str) -> Item {
        Item { key: "k".into(), line: line.as_bytes().to_vec() }
    }

    #[test]
    fn bulk_items_are_retried_or_refused_by_status() {
        let answer = r#"{"errors":true,"items":[
            {"index":{"status":201}},
            {"index":{"status":429,"error":{"type":"es_rejected_execution_exception"}}},
            {"index":{"status":400,"error":{"type":"mapper_parsing_exception"}}},
            {"create":{"status":503}}]}"#;
        let o = bulk_outcome(answer, 4).unwrap();
        assert_eq!(o.retry, vec![1, 3]);
        assert_eq!(o.rejected.len(), 1);
        assert_eq!(o.rejected[0].0, 2);
        assert!(o.rejected[0].1.contains("mapper_parsing_exception"));
        assert_eq!(bulk_outcome(r#"{"errors":false,"items":[]}"#, 4).unwrap(), Outcome::default());
        assert!(bulk_outcome(r#"{"errors":true,"items":[]}"#, 2).is_err(), "a short answer retries the batch");
    }

    #[test]
    fn bulk_body_pairs_an_action_with_each_document_and_ids_are_stable() {
        let body = bulk_body("flows-%Y", &[item(r#"{"a":1}"#), item(r#"{"a":2}"#)]).unwrap();
        let lines: Vec<Value> =
            body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        let year = jiff::Timestamp::now().strftime("%Y").to_string();
        assert_eq!(lines[0]["index"]["_index"], format!("flows-{year}"));
        assert_eq!(lines[1], json!({"a": 1}));
        assert_eq!(lines[0]["index"]["_id"], doc_id(br#"{"a":1}"#));
        assert_ne!(lines[0]["index"]["_id"], lines[2]["index"]["_id"]);
    }

    #[test]
    fn otlp_records_carry_the_fields_as_attributes() {
        let body = otlp_body(
            "node-1",
            LogType::Flows,
            &[item(r#"{"end_time":10,"source_port":80,"policies":{"all":["a"]}}"#)],
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        let r = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(r["timeUnixNano"], "10000000000");
        let attrs = r["attributes"].as_array().unwrap();
        assert!(attrs.contains(&json!({"key": "source_port", "value": {"intValue": "80"}})));
        assert!(attrs.contains(&json!({"key": "policies.all", "value": {"stringValue": "[\"a\"]"}})));
        assert!(attrs.contains(&json!({"key": "log.type", "value": {"stringValue": "flows"}})));
    }
}
