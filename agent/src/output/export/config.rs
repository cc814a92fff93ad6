//! The `exporters:` list of the configuration file, parsed and checked per type.
//!
//! Takes: the YAML entries. Gives: typed [`ExporterConfig`]s, or an error naming the entry, the
//! key and the reason. Must never: accept a key that does not belong to the entry's type, or
//! read a secret from anywhere but a file.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::LogType;
use crate::output::encode::Encoding;

/// One entry of `exporters:` as written. Every key of every type is here; [`resolve`] refuses
/// the ones that do not belong to the entry's `type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawExporter {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub encoding: Option<Encoding>,
    pub log_types: Option<Vec<LogType>>,
    // Delivery.
    pub batch_max_records: Option<usize>,
    pub batch_max_bytes: Option<String>,
    pub batch_timeout: Option<String>,
    pub queue_capacity: Option<usize>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_size: Option<String>,
    pub timeout: Option<String>,
    // file
    pub dir: Option<PathBuf>,
    pub max_file_size: Option<String>,
    pub max_files: Option<u32>,
    // syslog
    pub address: Option<String>,
    pub app_name: Option<String>,
    pub facility: Option<u8>,
    // TLS (syslog, http, kafka)
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    // http
    pub url: Option<String>,
    pub index: Option<String>,
    pub audit_index: Option<String>,
    pub report_index: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub api_key_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub sourcetype: Option<String>,
    pub dead_letter_file: Option<PathBuf>,
    // kafka
    pub brokers: Option<Vec<String>>,
    pub topic: Option<String>,
    pub audit_topic: Option<String>,
    pub report_topic: Option<String>,
    pub compression: Option<String>,
    // clickhouse
    pub database: Option<String>,
    pub table: Option<String>,
}

/// How an exporter batches, retries and spools.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// A batch is sealed at this many records...
    pub batch_max_records: usize,
    /// ... or this many bytes ...
    pub batch_max_bytes: u64,
    /// ... or when its first record is this old.
    pub batch_timeout: Duration,
    /// Submissions the intake queue holds before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// First retry delay; doubles per failure, with jitter, up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Directory of the on-disk spool.
    pub spool_dir: PathBuf,
    /// Spool size cap; past it the oldest batches are dropped (and counted).
    pub spool_max_bytes: u64,
    /// Deadline of one send.
    pub timeout: Duration,
}

/// TLS material for a client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// PEM CA bundle that signs the server (default: none trusted but this one).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM client key.
    pub key_file: Option<PathBuf>,
}

/// Syslog transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One datagram per message.
    Udp,
    /// Octet-counted frames (RFC 6587).
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425).
    Tls,
}

/// Where and how a sink delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// Rotated local files.
    File {
        /// Directory (default: `flow_log_dir`).
        dir: PathBuf,
        /// Rotation size.
        max_file_size: u64,
        /// Rotated files kept.
        max_files: u32,
    },
    /// RFC 5424 syslog.
    Syslog {
        /// UDP, TCP or TLS.
        transport: SyslogTransport,
        /// `HOST:PORT`.
        address: String,
        /// APP-NAME.
        app_name: String,
        /// Facility number (default 16, local0).
        facility: u8,
        /// TLS material.
        tls: TlsFiles,
    },
    /// Elasticsearch or OpenSearch `_bulk`.
    Elasticsearch {
        /// Base URL.
        url: String,
        /// Index pattern of flows (strftime, UTC).
        index: String,
        /// Index pattern of audit events.
        audit_index: String,
        /// Index pattern of report rows.
        report_index: String,
        /// `user` and the password file.
        basic: Option<(String, PathBuf)>,
        /// API key file.
        api_key_file: Option<PathBuf>,
        /// Rejected items go here.
        dead_letter_file: PathBuf,
        /// TLS material.
        tls: TlsFiles,
    },
    /// Splunk HTTP Event Collector.
    SplunkHec {
        /// Base URL.
        url: String,
        /// HEC token file.
        token_file: PathBuf,
        /// Index (optional).
        index: Option<String>,
        /// Sourcetype.
        sourcetype: String,
        /// Rejected batches go here.
        dead_letter_file: PathBuf,
        /// TLS material.
        tls: TlsFiles,
    },
    /// Kafka.
    Kafka {
        /// `HOST:PORT` bootstrap brokers.
        brokers: Vec<String>,
        /// Topic of flows.
        topic: String,
        /// Topic of audit events.
        audit_topic: String,
        /// Topic of report rows.
        report_topic: String,
        /// none, gzip, lz4, snappy, zstd.
        compression: String,
    },
    /// ClickHouse over HTTP: flow records as rows of a MergeTree table.
    ClickHouse {
        /// Base URL of the HTTP interface (`http://HOST:8123`).
        url: String,
        /// Database (created if missing).
        database: String,
        /// Table (created if missing).
        table: String,
        /// User and, if set, the password file (ClickHouse's `default` user without either).
        user: Option<(String, Option<PathBuf>)>,
        /// Refused rows go here.
        dead_letter_file: PathBuf,
        /// TLS material.
        tls: TlsFiles,
    },
    /// OTLP/HTTP logs (JSON).
    Otlp {
        /// Base URL (`/v1/logs` is appended unless present).
        url: String,
        /// Rejected batches go here.
        dead_letter_file: PathBuf,
        /// TLS material.
        tls: TlsFiles,
    },
}

/// One exporter, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterConfig {
    /// Unique name (metrics label, spool directory).
    pub name: String,
    /// Encoding of records.
    pub encoding: Encoding,
    /// What it gets.
    pub log_types: Vec<LogType>,
    /// Batching, retries, spool (unused by `file`).
    pub delivery: Delivery,
    /// The sink.
    pub sink: SinkConfig,
}

/// Defaults the resolution needs from the rest of the configuration.
pub struct Defaults {
    /// `flow_log_dir`.
    pub flow_log_dir: PathBuf,
    /// `flow_log_max_file_size`.
    pub max_file_size: u64,
    /// `flow_log_max_files`.
    pub max_files: u32,
    /// Parent of per-exporter spools (`<state_dir>/spool`).
    pub spool_root: PathBuf,
    /// What the process writes: the log types an entry may take, and those it takes without
    /// `log_types` (clickhouse: flows).
    pub log_types: ProcessLogTypes,
}

/// The log types of a process's exporters.
#[derive(Clone, Copy, Debug)]
pub struct ProcessLogTypes {
    /// The log types the process makes.
    pub accepted: &'static [LogType],
    /// An entry's log types when it has no `log_types`.
    pub default: &'static [LogType],
    /// Why another log type is refused.
    pub refusal: &'static str,
}

/// `flowaudit run`: flows and audit events.
pub const AGENT_LOG_TYPES: ProcessLogTypes = ProcessLogTypes {
    accepted: &[LogType::Flows, LogType::Audit],
    default: &[LogType::Flows, LogType::Audit],
    refusal: "report rows are sent by flowaudit reporter (its --config), not by the agent",
};

/// `flowaudit reporter`: report rows.
pub const REPORTER_LOG_TYPES: ProcessLogTypes = ProcessLogTypes {
    accepted: &[LogType::Reports],
    default: &[LogType::Reports],
    refusal: "flowaudit reporter sends the rows of its reports only (log_types: [reports])",
};

/// Keys each type accepts besides the common ones.
fn type_keys(kind: &str) -> Option<&'static [&'static str]> {
    const TLS: [&str; 3] = ["ca_file", "cert_file", "key_file"];
    Some(match kind {
        "file" => &["dir", "max_file_size", "max_files"],
        "syslog" => &["address", "app_name", "facility", TLS[0], TLS[1], TLS[2]],
        "elasticsearch" => &[
            "url",
            "index",
            "audit_index",
            "report_index",
            "username",
            "password_file",
            "api_key_file",
            "dead_letter_file",
            TLS[0],
            TLS[1],
            TLS[2],
        ],
        "splunk_hec" => &["url", "token_file", "index", "sourcetype", "dead_letter_file", TLS[0], TLS[1], TLS[2]],
        "kafka" => &["brokers", "topic", "audit_topic", "report_topic", "compression"],
        "otlp" => &["url", "dead_letter_file", TLS[0], TLS[1], TLS[2]],
        "clickhouse" => {
            &["url", "database", "table", "username", "password_file", "dead_letter_file", TLS[0], TLS[1], TLS[2]]
        }
        _ => return None,
    })
}

impl RawExporter {
    /// The type-specific keys this entry sets.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |name: &'static str, set: bool| {
            if set {
                keys.push(name);
            }
        };
        check("dir", self.dir.is_some());
        check("max_file_size", self.max_file_size.is_some());
        check("max_files", self.max_files.is_some());
        check("address", self.address.is_some());
        check("app_name", self.app_name.is_some());
        check("facility", self.facility.is_some());
        check("ca_file", self.ca_file.is_some());
        check("cert_file", self.cert_file.is_some());
        check("key_file", self.key_file.is_some());
        check("url", self.url.is_some());
        check("index", self.index.is_some());
        check("audit_index", self.audit_index.is_some());
        check("report_index", self.report_index.is_some());
        check("username", self.username.is_some());
        check("password_file", self.password_file.is_some());
        check("api_key_file", self.api_key_file.is_some());
        check("token_file", self.token_file.is_some());
        check("sourcetype", self.sourcetype.is_some());
        check("dead_letter_file", self.dead_letter_file.is_some());
        check("brokers", self.brokers.is_some());
        check("topic", self.topic.is_some());
        check("audit_topic", self.audit_topic.is_some());
        check("report_topic", self.report_topic.is_some());
        check("compression", self.compression.is_some());
        check("database", self.database.is_some());
        check("table", self.table.is_some());
        keys
    }
}

/// A bad entry: `exporters[N].key` and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// `exporters[N].key`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Resolves the list; names must be unique. `None` (no `exporters:` key) gives the default: one
/// `file` exporter named `file`, flows and audit, calico encoding.
pub fn resolve(raw: Option<&[RawExporter]>, defaults: &Defaults) -> Result<Vec<ExporterConfig>, FieldProblem> {
    let default = [RawExporter { name: Some("file".into()), kind: Some("file".into()), ..Default::default() }];
    let raw = raw.unwrap_or(&default);
    let mut out: Vec<ExporterConfig> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let e = resolve_one(i, r, defaults)?;
        if out.iter().any(|o| o.name == e.name) {
            return Err(FieldProblem {
                field: format!("exporters[{i}].name"),
                reason: format!("{:?} is used twice", e.name),
            });
        }
        out.push(e);
    }
    Ok(out)
}

fn resolve_one(i: usize, r: &RawExporter, defaults: &Defaults) -> Result<ExporterConfig, FieldProblem> {
    let problem = |key: &str, reason: String| FieldProblem { field: format!("exporters[{i}].{key}"), reason };
    let name = r.name.clone().ok_or_else(|| problem("name", "required".into()))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(problem("name", format!("{name:?}: use letters, digits, '-' and '_' (it names a directory)")));
    }
    let kind = r.kind.clone().ok_or_else(|| problem("type", "required".into()))?;
    let allowed = type_keys(&kind).ok_or_else(|| {
        problem(
            "type",
            format!("{kind:?} is not one of file, syslog, elasticsearch, splunk_hec, kafka, otlp, clickhouse"),
        )
    })?;
    if let Some(key) = r.set_keys().into_iter().find(|k| !allowed.contains(k)) {
        return Err(problem(key, format!("not a key of type {kind}")));
    }
    let duration = |key: &str, v: &Option<String>, d: &str| -> Result<Duration, FieldProblem> {
        let v = v.as_deref().unwrap_or(d);
        humantime::parse_duration(v.trim()).map_err(|e| problem(key, format!("{v:?} is not a duration ({e})")))
    };
    let size = |key: &str, v: &Option<String>, d: &str| -> Result<u64, FieldProblem> {
        let v = v.as_deref().unwrap_or(d);
        v.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| problem(key, format!("{v:?} is not a size ({e})")))
    };
    let required = |key: &str, v: &Option<String>| -> Result<String, FieldProblem> {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| problem(key, format!("required for type {kind}")))
    };
    let readable = |key: &str, p: &Option<PathBuf>| -> Result<Option<PathBuf>, FieldProblem> {
        match p {
            Some(p) if std::fs::metadata(p).is_err() => {
                Err(problem(key, format!("{}: cannot read the file", p.display())))
            }
            other => Ok(other.clone()),
        }
    };
    let tls = || -> Result<TlsFiles, FieldProblem> {
        let t = TlsFiles {
            ca_file: readable("ca_file", &r.ca_file)?,
            cert_file: readable("cert_file", &r.cert_file)?,
            key_file: readable("key_file", &r.key_file)?,
        };
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err(problem("key_file", "cert_file and key_file go together".into()));
        }
        Ok(t)
    };
    let spool_dir = r.spool_dir.clone().unwrap_or_else(|| defaults.spool_root.join(&name));
    let dead_letter = r.dead_letter_file.clone().unwrap_or_else(|| spool_dir.join("dead-letter.log"));
    let delivery = Delivery {
        batch_max_records: r.batch_max_records.unwrap_or(1000).max(1),
        batch_max_bytes: size("batch_max_bytes", &r.batch_max_bytes, "1MiB")?.max(1),
        batch_timeout: duration("batch_timeout", &r.batch_timeout, "1s")?,
        queue_capacity: r.queue_capacity.unwrap_or(1024).max(1),
        retry_initial: duration("retry_initial", &r.retry_initial, "500ms")?,
        retry_max: duration("retry_max", &r.retry_max, "30s")?,
        spool_dir,
        spool_max_bytes: size("spool_max_size", &r.spool_max_size, "1GiB")?,
        timeout: duration("timeout", &r.timeout, "10s")?,
    };
    let sink = match kind.as_str() {
        "file" => SinkConfig::File {
            dir: r.dir.clone().unwrap_or_else(|| defaults.flow_log_dir.clone()),
            max_file_size: match &r.max_file_size {
                Some(_) => size("max_file_size", &r.max_file_size, "")?,
                None => defaults.max_file_size,
            },
            max_files: r.max_files.unwrap_or(defaults.max_files),
        },
        "syslog" => {
            let address = required("address", &r.address)?;
            let (scheme, hostport) = address
                .split_once("://")
                .ok_or_else(|| problem("address", format!("{address:?}: use udp://, tcp:// or tls://HOST:PORT")))?;
            let transport = match scheme {
                "udp" => SyslogTransport::Udp,
                "tcp" => SyslogTransport::Tcp,
                "tls" => SyslogTransport::Tls,
                _ => return Err(problem("address", format!("{scheme:?}: use udp, tcp or tls"))),
            };
            if hostport.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(problem("address", format!("{address:?}: no :PORT")));
            }
            let facility = r.facility.unwrap_or(16);
            if facility > 23 {
                return Err(problem("facility", format!("{facility}: must be 0-23")));
            }
            SinkConfig::Syslog {
                transport,
                address: hostport.to_owned(),
                app_name: r.app_name.clone().unwrap_or_else(|| "flowaudit".into()),
                facility,
                tls: tls()?,
            }
        }
        "elasticsearch" => {
            if r.username.is_some() != r.password_file.is_some() {
                return Err(problem("password_file", "username and password_file go together".into()));
            }
            SinkConfig::Elasticsearch {
                url: url(&required("url", &r.url)?).map_err(|e| problem("url", e))?,
                index: r.index.clone().unwrap_or_else(|| "flowaudit-flows-%Y.%m.%d".into()),
                audit_index: r.audit_index.clone().unwrap_or_else(|| "flowaudit-audit-%Y.%m.%d".into()),
                report_index: r.report_index.clone().unwrap_or_else(|| "flowaudit-reports-%Y.%m.%d".into()),
                basic: match (&r.username, readable("password_file", &r.password_file)?) {
                    (Some(u), Some(p)) => Some((u.clone(), p)),
                    _ => None,
                },
                api_key_file: readable("api_key_file", &r.api_key_file)?,
                dead_letter_file: dead_letter,
                tls: tls()?,
            }
        }
        "splunk_hec" => SinkConfig::SplunkHec {
            url: url(&required("url", &r.url)?).map_err(|e| problem("url", e))?,
            token_file: readable("token_file", &r.token_file)?
                .ok_or_else(|| problem("token_file", "required for type splunk_hec".into()))?,
            index: r.index.clone(),
            sourcetype: r.sourcetype.clone().unwrap_or_else(|| "flowaudit".into()),
            dead_letter_file: dead_letter,
            tls: tls()?,
        },
        "kafka" => {
            let brokers = r.brokers.clone().unwrap_or_default();
            if brokers.is_empty() {
                return Err(problem("brokers", "required for type kafka".into()));
            }
            let compression = r.compression.clone().unwrap_or_else(|| "none".into());
            if !["none", "gzip", "lz4", "snappy", "zstd"].contains(&compression.as_str()) {
                return Err(problem("compression", format!("{compression:?}: none, gzip, lz4, snappy or zstd")));
            }
            let topic = required("topic", &r.topic)?;
            SinkConfig::Kafka {
                brokers,
                audit_topic: r.audit_topic.clone().unwrap_or_else(|| format!("{topic}-audit")),
                report_topic: r.report_topic.clone().unwrap_or_else(|| format!("{topic}-reports")),
                topic,
                compression,
            }
        }
        "otlp" => SinkConfig::Otlp {
            url: url(&required("url", &r.url)?).map_err(|e| problem("url", e))?,
            dead_letter_file: dead_letter,
            tls: tls()?,
        },
        "clickhouse" => {
            if r.encoding.is_some_and(|e| e != Encoding::Calico) {
                return Err(problem(
                    "encoding",
                    "type clickhouse stores the calico encoding only: its columns are the flow-log fields".into(),
                ));
            }
            if let Some(t) = r.log_types.iter().flatten().find(|t| **t != LogType::Flows) {
                return Err(problem(
                    "log_types",
                    format!("type clickhouse stores flows only, not {}: send those to another exporter", t.name()),
                ));
            }
            let identifier = |key: &str, v: &Option<String>, d: &str| -> Result<String, FieldProblem> {
                let v = v.clone().unwrap_or_else(|| d.to_owned());
                if crate::clickhouse::is_identifier(&v) {
                    Ok(v)
                } else {
                    Err(problem(key, format!("{v:?}: use letters, digits and '_', not starting with a digit")))
                }
            };
            SinkConfig::ClickHouse {
                url: url(&required("url", &r.url)?).map_err(|e| problem("url", e))?,
                database: identifier("database", &r.database, crate::clickhouse::DEFAULT_DATABASE)?,
                table: identifier("table", &r.table, crate::clickhouse::DEFAULT_TABLE)?,
                user: match (&r.username, readable("password_file", &r.password_file)?) {
                    (None, None) => None,
                    (user, password) => Some((user.clone().unwrap_or_else(|| "default".into()), password)),
                },
                dead_letter_file: dead_letter,
                tls: tls()?,
            }
        }
        _ => unreachable!("type_keys accepted it"),
    };
    let log_types = match &r.log_types {
        Some(t) => t.clone(),
        None if kind == "clickhouse" => vec![LogType::Flows],
        None => defaults.log_types.default.to_vec(),
    };
    if let Some(t) = log_types.iter().find(|t| !defaults.log_types.accepted.contains(t)) {
        return Err(problem("log_types", format!("{}: {}", t.name(), defaults.log_types.refusal)));
    }
    Ok(ExporterConfig { name, encoding: r.encoding.unwrap_or_default(), log_types, delivery, sink })
}

fn url(v: &str) -> Result<String, String> {
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(format!("{v:?}: must start with http:// or https://"));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            flow_log_dir: "/logs".into(),
            max_file_size: 100,
            max_files: 5,
            spool_root: "/var/lib/flowaudit/spool".into(),
            log_types: AGENT_LOG_TYPES,
        }
    }

    fn parse(yaml: &str) -> Result<Vec<ExporterConfig>, FieldProblem> {
        let raw: Vec<RawExporter> = serde_yaml_ng::from_str(yaml).unwrap();
        resolve(Some(&raw), &defaults())
    }

    #[test]
    fn the_default_is_the_local_file() {
        let e = resolve(None, &defaults()).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name, "file");
        assert_eq!(e[0].sink, SinkConfig::File { dir: "/logs".into(), max_file_size: 100, max_files: 5 });
        assert_eq!(e[0].log_types, vec![LogType::Flows, LogType::Audit]);
    }

    #[test]
    fn syslog_and_kafka_resolve_with_defaults() {
        let e = parse(
            "- {name: siem, type: syslog, address: 'tls://127.0.0.1:6514', encoding: cef, log_types: [flows]}\n\
             - {name: bus, type: kafka, brokers: ['127.0.0.1:9092'], topic: flows, compression: zstd}",
        )
        .unwrap();
        assert_eq!(e[0].encoding, Encoding::Cef);
        assert_eq!(e[0].log_types, vec![LogType::Flows]);
        assert_eq!(e[0].delivery.spool_dir, PathBuf::from("/var/lib/flowaudit/spool/siem"));
        let SinkConfig::Syslog { transport, address, app_name, facility, .. } = &e[0].sink else { panic!() };
        assert_eq!(
            (*transport, address.as_str(), app_name.as_str(), *facility),
            (SyslogTransport::Tls, "127.0.0.1:6514", "flowaudit", 16)
        );
        let SinkConfig::Kafka { audit_topic, .. } = &e[1].sink else { panic!() };
        assert_eq!(audit_topic, "flows-audit");
    }

    #[test]
    fn clickhouse_takes_flows_into_flowaudit_flows_by_default() {
        let e = parse(
            "- {name: ch, type: clickhouse, url: 'http://127.0.0.1:8123/'}\n\
             - {name: ch2, type: clickhouse, url: 'https://ch:8443', database: netlogs, table: flows_v1, username: fa}",
        )
        .unwrap();
        assert_eq!(e[0].log_types, vec![LogType::Flows]);
        assert_eq!(e[0].encoding, Encoding::Calico);
        assert_eq!(
            e[0].sink,
            SinkConfig::ClickHouse {
                url: "http://127.0.0.1:8123".into(),
                database: "flowaudit".into(),
                table: "flows".into(),
                user: None,
                dead_letter_file: "/var/lib/flowaudit/spool/ch/dead-letter.log".into(),
                tls: TlsFiles::default(),
            }
        );
        let SinkConfig::ClickHouse { database, table, user, .. } = &e[1].sink else { panic!() };
        assert_eq!(
            (database.as_str(), table.as_str(), user.clone()),
            ("netlogs", "flows_v1", Some(("fa".into(), None)))
        );
    }

    #[test]
    fn the_reporter_sends_report_rows_only() {
        let reporter = Defaults { log_types: REPORTER_LOG_TYPES, ..defaults() };
        let raw: Vec<RawExporter> = serde_yaml_ng::from_str(
            "- {name: local, type: file, dir: /reports}\n\
             - {name: es, type: elasticsearch, url: 'http://h:9200'}\n\
             - {name: bus, type: kafka, brokers: [h:1], topic: t}",
        )
        .unwrap();
        let e = resolve(Some(&raw), &reporter).unwrap();
        assert!(e.iter().all(|e| e.log_types == vec![LogType::Reports]), "{e:?}");
        let SinkConfig::Elasticsearch { report_index, .. } = &e[1].sink else { panic!() };
        assert_eq!(report_index, "flowaudit-reports-%Y.%m.%d");
        let SinkConfig::Kafka { report_topic, .. } = &e[2].sink else { panic!() };
        assert_eq!(report_topic, "t-reports");
        for (yaml, reason) in [
            (
                "- {name: a, type: syslog, address: 'udp://h:514', log_types: [reports, audit]}",
                "audit: flowaudit reporter sends the rows of its reports only",
            ),
            ("- {name: a, type: clickhouse, url: 'http://h:8123'}", "flows: flowaudit reporter sends"),
            (
                "- {name: a, type: clickhouse, url: 'http://h:8123', log_types: [reports]}",
                "type clickhouse stores flows only, not reports",
            ),
        ] {
            let raw: Vec<RawExporter> = serde_yaml_ng::from_str(yaml).unwrap();
            let e = resolve(Some(&raw), &reporter).unwrap_err();
            assert_eq!(e.field, "exporters[0].log_types", "{yaml}");
            assert!(e.reason.contains(reason), "{yaml}: {}", e.reason);
        }
    }

    #[test]
    fn errors_name_the_entry_and_the_key() {
        let cases = [
            (
                "- {name: a, type: syslog, address: 'udp://h:514', topic: x}",
                "exporters[0].topic",
                "not a key of type syslog",
            ),
            ("- {name: a, type: syslog, address: 'h:514'}", "exporters[0].address", "use udp://"),
            ("- {name: a, type: mq}", "exporters[0].type", "not one of"),
            ("- {name: a, type: otlp}", "exporters[0].url", "required for type otlp"),
            ("- {name: a, type: file}\n- {name: a, type: file}", "exporters[1].name", "used twice"),
            ("- {name: 'a b', type: file}", "exporters[0].name", "letters"),
            (
                "- {name: a, type: splunk_hec, url: 'http://h', token_file: /nonexistent/t}",
                "exporters[0].token_file",
                "cannot read",
            ),
            (
                "- {name: a, type: kafka, brokers: [h:1], topic: t, compression: brotli}",
                "exporters[0].compression",
                "none, gzip",
            ),
            ("- {name: a, type: file, batch_timeout: soon}", "exporters[0].batch_timeout", "not a duration"),
            (
                "- {name: a, type: clickhouse, url: 'http://h:8123', log_types: [flows, audit]}",
                "exporters[0].log_types",
                "stores flows only, not audit",
            ),
            (
                "- {name: a, type: clickhouse, url: 'http://h:8123', encoding: ecs}",
                "exporters[0].encoding",
                "calico encoding only",
            ),
            ("- {name: a, type: clickhouse, url: 'h:8123'}", "exporters[0].url", "must start with http://"),
            ("- {name: a, type: clickhouse, url: 'http://h', table: 'flows;drop'}", "exporters[0].table", "letters"),
            ("- {name: a, type: clickhouse, url: 'http://h', database: 1db}", "exporters[0].database", "letters"),
            (
                "- {name: a, type: syslog, address: 'udp://h:514', table: t}",
                "exporters[0].table",
                "not a key of type syslog",
            ),
            (
                "- {name: a, type: file}\n- {name: b, type: syslog, address: 'udp://h:514', log_types: [flows, reports]}",
                "exporters[1].log_types",
                "reports: report rows are sent by flowaudit reporter",
            ),
        ];
        for (yaml, field, reason) in cases {
            let e = parse(yaml).unwrap_err();
            assert_eq!(e.field, field, "{yaml}");
            assert!(e.reason.contains(reason), "{yaml}: {}", e.reason);
        }
    }
}
