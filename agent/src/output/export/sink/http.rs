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
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(timeout)
            .user_agent(concat!("flowaudit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::Config(e.to_string()))?;
        let auth = auth
            .map(|a| {
                let mut v = HeaderValue::from_str(&a)
                    .map_err(|_| SinkError::Config("the secret is not a valid header".into()))?;
                v.set_sensitive(true);
                Ok::<_, SinkError>(v)
            })
            .transpose()?;
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
            HttpApi::Elasticsearch { index, audit_index } => {
                let pattern = if log_type == LogType::Flows { index } else { audit_index };
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

/// OTLP attribute values of a JSON object's fields, flattened with dots.
fn attributes(prefix: &str, v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                attributes(&key, v, out);
            }
        }
        Value::Null => {}
        Value::Bool(b) => out.push(json!({"key": prefix, "value": {"boolValue": b}})),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            out.push(json!({"key": prefix, "value": {"intValue": n.to_string()}}))
        }
        Value::Number(n) => out.push(json!({"key": prefix, "value": {"doubleValue": n.as_f64()}})),
        Value::String(s) => out.push(json!({"key": prefix, "value": {"stringValue": s}})),
        Value::Array(_) => out.push(json!({"key": prefix, "value": {"stringValue": v.to_string()}})),
    }
}

fn otlp_body(host: &str, log_type: LogType, items: &[Item]) -> Vec<u8> {
    let observed = jiff::Timestamp::now().as_nanosecond().to_string();
    let records: Vec<Value> = items
        .iter()
        .map(|item| {
            let body = String::from_utf8_lossy(&item.line).into_owned();
            let mut attrs = vec![json!({"key": "log.type", "value": {"stringValue": log_type.name()}})];
            let mut time = None;
            if let Ok(v) = serde_json::from_slice::<Value>(&item.line) {
                time = v.get("end_time").and_then(Value::as_u64).map(|s| (s as u128 * 1_000_000_000).to_string());
                attributes("", &v, &mut attrs);
            }
            let mut r = json!({
                "observedTimeUnixNano": observed,
                "severityNumber": 9,
                "severityText": "INFO",
                "body": {"stringValue": body},
                "attributes": attrs,
            });
            if let Some(t) = time {
                r["timeUnixNano"] = json!(t);
            }
            r
        })
        .collect();
    let doc = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "flowaudit"}},
            {"key": "host.name", "value": {"stringValue": host}},
        ]},
        "scopeLogs": [{"scope": {"name": "flowaudit", "version": env!("CARGO_PKG_VERSION")}, "logRecords": records}],
    }]});
    serde_json::to_vec(&doc).unwrap_or_default()
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
