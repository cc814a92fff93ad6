//! Agent configuration: a YAML file and command-line flags, merged into one typed [`Settings`].
//!
//! Takes: the parsed flags ([`RunFlags`]) and optionally a YAML file. Gives: validated
//! [`Settings`] or a [`ConfigError`] that names the file, the key and the reason. Must never:
//! accept an unknown key (every struct is `deny_unknown_fields`), fall back silently on a bad
//! value, or touch the system (no file is created here). Flags win over the file; every flag is a
//! key of the file under the flag's name in snake_case. The reference is `docs/config.md`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use crate::model::AggregationLevel;
use crate::output::export::config::{self as export_config, ExporterConfig, RawExporter};
use crate::output::{HmacKey, Retention};

/// A configuration problem: which source, which key, what is wrong. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {field}: {reason}")]
pub struct ConfigError {
    /// The file, or `command line`.
    pub source_name: String,
    /// The key or flag.
    pub field: String,
    /// Why the value was refused.
    pub reason: String,
}

impl ConfigError {
    fn new(source_name: &str, field: &str, reason: impl Into<String>) -> Self {
        Self { source_name: source_name.to_owned(), field: field.to_owned(), reason: reason.into() }
    }
}

/// Flags of `flowaudit run`, before merging. `None` = not given on the command line.
#[derive(Debug, Default, Clone)]
pub struct RunFlags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--flow-log-dir DIR`.
    pub flow_log_dir: Option<PathBuf>,
    /// `--flush-interval 15s`.
    pub flush_interval: Option<String>,
    /// `--interfaces GLOB,...`.
    pub interfaces: Option<Vec<String>>,
    /// `--cgroup PATH`.
    pub cgroup: Option<PathBuf>,
    /// `--metrics-addr ADDR:PORT`.
    pub metrics_addr: Option<String>,
    /// `--node NAME`.
    pub node: Option<String>,
    /// `--aggregation-allowed N`.
    pub aggregation_allowed: Option<u8>,
    /// `--aggregation-denied N`.
    pub aggregation_denied: Option<u8>,
    /// `--cluster kube|DIR`.
    pub cluster: Option<String>,
    /// `--pin` (only `Some(true)` when given).
    pub pin: Option<bool>,
    /// `--pin-path DIR`.
    pub pin_path: Option<PathBuf>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--kube-audit-log FILE`.
    pub kube_audit_log: Option<PathBuf>,
}

/// The YAML file. Every field optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    flow_log_dir: Option<PathBuf>,
    flush_interval: Option<String>,
    interfaces: Option<Vec<String>>,
    cgroup: Option<PathBuf>,
    metrics_addr: Option<String>,
    node: Option<String>,
    aggregation_allowed: Option<u8>,
    aggregation_denied: Option<u8>,
    cluster: Option<String>,
    pod_deletion_grace: Option<String>,
    flow_table_entries: Option<u32>,
    ring_buffer_size: Option<String>,
    idle_timeout: Option<String>,
    tcp_idle_timeout: Option<String>,
    max_connections: Option<u32>,
    flow_log_max_file_size: Option<String>,
    flow_log_max_files: Option<u32>,
    pin: Option<bool>,
    pin_path: Option<PathBuf>,
    exporters: Option<Vec<RawExporter>>,
    state_dir: Option<PathBuf>,
    kube_audit_log: Option<PathBuf>,
    retention: Option<RetentionFile>,
    evidence: Option<EvidenceFile>,
    snapshots: Option<SnapshotsFile>,
}

/// `snapshots:` of the YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotsFile {
    archive: Option<PathBuf>,
    interval: Option<String>,
}

/// `retention:` of the YAML file: one entry per log type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    flows: Option<RetentionEntry>,
    audit: Option<RetentionEntry>,
}

/// `retention.flows` / `retention.audit`. `0` (or `0s`) turns a limit off.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionEntry {
    max_age: Option<String>,
    max_total_size: Option<String>,
}

/// `evidence:` of the YAML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceFile {
    hmac_key_file: Option<PathBuf>,
}

/// Everything the agent runs with, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of `flows.log`.
    pub flow_log_dir: PathBuf,
    /// Drain and write period.
    pub flush_interval: Duration,
    /// Interface name globs for the TC programs (empty: cgroup hook only).
    pub interfaces: Vec<String>,
    /// cgroup v2 directory the `cgroup_skb` programs attach to.
    pub cgroup: PathBuf,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    /// Node name written in `host`.
    pub node: String,
    /// Aggregation of allowed flows.
    pub aggregation_allowed: AggregationLevel,
    /// Aggregation of denied flows.
    pub aggregation_denied: AggregationLevel,
    /// Where cluster state comes from (`None`: no identity, names are `-`).
    pub cluster: Option<ClusterSource>,
    /// How long a deleted pod keeps naming its addresses and cgroups.
    pub pod_deletion_grace: Duration,
    /// Entries of each of the two kernel flow tables.
    pub flow_table_entries: u32,
    /// Bytes of the kernel ring buffer (a power of two, at least one page).
    pub ring_buffer_size: u32,
    /// A UDP/ICMP/other flow with no packet for this long is complete.
    pub idle_timeout: Duration,
    /// A TCP connection with no packet and no FIN/RST for this long is forgotten.
    pub tcp_idle_timeout: Duration,
    /// Connections the aggregate stage remembers between intervals at most.
    pub max_connections: u32,
    /// `flows.log` is rotated when it would grow past this many bytes.
    pub flow_log_max_file_size: u64,
    /// Rotated files kept (`flows.log.1` ... `flows.log.N`).
    pub flow_log_max_files: u32,
    /// Keep programs, links and maps pinned across restarts.
    pub pin: bool,
    /// bpffs directory of the pins.
    pub pin_path: PathBuf,
    /// Where records go (default: one `file` exporter, `flows.log` and `audit.log`).
    pub exporters: Vec<ExporterConfig>,
    /// Retention of `flows.log*`.
    pub retention_flows: Retention,
    /// Retention of `audit.log*`.
    pub retention_audit: Retention,
    /// `evidence.hmac_key_file`: the file the key was read from.
    pub hmac_key_file: Option<PathBuf>,
    /// The key that signs `chain-heads.log` (its `Debug` prints no secret).
    pub hmac_key: Option<HmacKey>,
    /// Directory of the agent's restart state (the audit log's last seen objects, the position in
    /// the kube-apiserver audit log).
    pub state_dir: PathBuf,
    /// A kube-apiserver audit log to follow into `audit.log` (`None`: none).
    pub kube_audit_log: Option<PathBuf>,
    /// `snapshots:`: write the cluster state to an archive (`None`: never).
    pub snapshots: Option<Snapshots>,
}

/// Snapshots of the cluster state written by `run` (the reports' state at an interval's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshots {
    /// `snapshots.archive`: snapshots go to `<archive>/snapshots/`.
    pub archive: PathBuf,
    /// `snapshots.interval` (default 24h): a snapshot is written when the newest is this old.
    pub interval: Duration,
}

/// Where the cluster state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kube,
    /// A directory of manifests, watched.
    Dir(PathBuf),
}

/// Default `pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/flowaudit";

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flowaudit";

/// Default `--flow-log-dir`.
pub const DEFAULT_FLOW_LOG_DIR: &str = "/var/log/flowaudit";
const DEFAULT_FLUSH_INTERVAL: &str = "15s";
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
const DEFAULT_FLOW_TABLE_ENTRIES: u32 = 65_536;
const DEFAULT_RING_BUFFER_SIZE: &str = "1MiB";
const DEFAULT_IDLE_TIMEOUT: &str = "60s";
const DEFAULT_TCP_IDLE_TIMEOUT: &str = "2h";
/// Default `max_connections`: the same as Linux's common `nf_conntrack_max`.
const DEFAULT_MAX_CONNECTIONS: u32 = 262_144;
const DEFAULT_MAX_FILE_SIZE: &str = "100MB";
const DEFAULT_MAX_FILES: u32 = 5;
const DEFAULT_POD_DELETION_GRACE: &str = "60s";
/// Default `retention.flows.max_age`: Calico's flow-log retention (8 days).
const DEFAULT_FLOWS_MAX_AGE: &str = "8d";
/// Default `retention.audit.max_age`: Calico's audit retention (91 days).
const DEFAULT_AUDIT_MAX_AGE: &str = "91d";
const CLI: &str = "command line";

impl Settings {
    /// Merges `flags` over the `--config` file (if any) over the defaults.
    /// `cgroup_default` and `hostname` are consulted only when neither source sets them.
    pub fn resolve(
        flags: &RunFlags,
        cgroup_default: impl FnOnce() -> Option<PathBuf>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        match &flags.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(&name, "-", format!("cannot read: {e}")))?;
                Self::resolve_text(flags, &name, &text, cgroup_default, hostname)
            }
            None => Self::merge(flags, FileConfig::default(), String::new(), cgroup_default, hostname),
        }
    }

    /// [`Settings::resolve`] with the `--config` file's text given instead of read from
    /// `flags.config` (which is ignored): `name` is the file's name in errors. This is what
    /// `resolve` does once it has read the file, and the entry point of the `config` fuzz target.
    ///
    /// Besides parsing, it looks at the paths the text names (`cluster` must be a directory,
    /// `evidence.hmac_key_file` is read), as `flowaudit check` does.
    pub fn resolve_text(
        flags: &RunFlags,
        name: &str,
        text: &str,
        cgroup_default: impl FnOnce() -> Option<PathBuf>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let file = parse_file_text(name, text)?;
        Self::merge(flags, file, name.to_owned(), cgroup_default, hostname)
    }

    /// Merges `flags` over the parsed file named `file_name` over the defaults.
    fn merge(
        flags: &RunFlags,
        file: FileConfig,
        file_name: String,
        cgroup_default: impl FnOnce() -> Option<PathBuf>,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        // Picks the flag, else the file's key; remembers which source the value came from.
        fn pick<'a, T: Clone>(flag: &Option<T>, file: &Option<T>, file_name: &'a str) -> Option<(T, &'a str)> {
            flag.clone().map(|v| (v, CLI)).or_else(|| file.clone().map(|v| (v, file_name)))
        }

        let flush_interval = match pick(&flags.flush_interval, &file.flush_interval, &file_name) {
            Some((v, src)) => duration(src, "flush_interval", &v)?,
            None => duration(CLI, "flush_interval", DEFAULT_FLUSH_INTERVAL)?,
        };
        if flush_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(CLI, "flush_interval", "must be at least 100ms"));
        }
        let interfaces = pick(&flags.interfaces, &file.interfaces, &file_name)
            .map(|(v, src)| globs(src, &v))
            .transpose()?
            .unwrap_or_default();
        let metrics_addr = match pick(&flags.metrics_addr, &file.metrics_addr, &file_name) {
            Some((v, src)) => v
                .parse()
                .map_err(|e| ConfigError::new(src, "metrics_addr", format!("{v:?} is not ADDRESS:PORT ({e})")))?,
            None => DEFAULT_METRICS_ADDR.parse().expect("valid default"),
        };
        let cgroup = match pick(&flags.cgroup, &file.cgroup, &file_name) {
            Some((v, src)) => match cgroup2_dir_problem(&v) {
                Some(reason) => return Err(ConfigError::new(src, "cgroup", reason)),
                None => v,
            },
            None => cgroup_default().ok_or_else(|| {
                ConfigError::new(CLI, "cgroup", "no cgroup2 mount in /proc/mounts; pass --cgroup PATH")
            })?,
        };
        let node = match pick(&flags.node, &file.node, &file_name) {
            Some((v, src)) if v.is_empty() => {
                return Err(ConfigError::new(src, "node", "must not be empty"));
            }
            Some((v, _)) => v,
            None => hostname().unwrap_or_else(|| "unknown".to_owned()),
        };
        let level = |field: &str, flag: &Option<u8>, key: &Option<u8>, default: u8| -> Result<_, ConfigError> {
            match pick(flag, key, &file_name).unwrap_or((default, CLI)) {
                (0, _) => Ok(AggregationLevel::FiveTuple),
                (1, _) => Ok(AggregationLevel::NoSourcePort),
                (2, _) => Ok(AggregationLevel::PrefixName),
                (3, _) => Ok(AggregationLevel::NoDestPorts),
                (n, src) => Err(ConfigError::new(src, field, format!("{n} is not a level (0-3)"))),
            }
        };
        let aggregation_allowed =
            level("aggregation_allowed", &flags.aggregation_allowed, &file.aggregation_allowed, 2)?;
        let aggregation_denied = level("aggregation_denied", &flags.aggregation_denied, &file.aggregation_denied, 1)?;
        let cluster = match pick(&flags.cluster, &file.cluster, &file_name) {
            None => None,
            Some((v, _)) if v == "kube" => Some(ClusterSource::Kube),
            Some((v, src)) => {
                let dir = PathBuf::from(&v);
                if !dir.is_dir() {
                    return Err(ConfigError::new(src, "cluster", format!("{v:?} is neither `kube` nor a directory")));
                }
                Some(ClusterSource::Dir(dir))
            }
        };
        let pod_deletion_grace = duration(
            &file_name,
            "pod_deletion_grace",
            file.pod_deletion_grace.as_deref().unwrap_or(DEFAULT_POD_DELETION_GRACE),
        )?;

        let fname = file_name.as_str();
        let flow_table_entries = file.flow_table_entries.unwrap_or(DEFAULT_FLOW_TABLE_ENTRIES);
        if flow_table_entries == 0 {
            return Err(ConfigError::new(fname, "flow_table_entries", "must be at least 1"));
        }
        let ring_buffer_size = match &file.ring_buffer_size {
            Some(v) => size(fname, "ring_buffer_size", v)?,
            None => size(CLI, "ring_buffer_size", DEFAULT_RING_BUFFER_SIZE)?,
        };
        let page = 4096;
        if ring_buffer_size < page || !ring_buffer_size.is_power_of_two() || ring_buffer_size > 1 << 30 {
            return Err(ConfigError::new(
                fname,
                "ring_buffer_size",
                format!("{ring_buffer_size} bytes: must be a power of two between 4KiB and 1GiB"),
            ));
        }
        let idle_timeout =
            duration(fname, "idle_timeout", file.idle_timeout.as_deref().unwrap_or(DEFAULT_IDLE_TIMEOUT))?;
        let tcp_idle_timeout =
            duration(fname, "tcp_idle_timeout", file.tcp_idle_timeout.as_deref().unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT))?;
        let max_connections = file.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(ConfigError::new(fname, "max_connections", "must be at least 1"));
        }
        let flow_log_max_file_size = size(
            fname,
            "flow_log_max_file_size",
            file.flow_log_max_file_size.as_deref().unwrap_or(DEFAULT_MAX_FILE_SIZE),
        )?;
        if flow_log_max_file_size < 4096 {
            return Err(ConfigError::new(fname, "flow_log_max_file_size", "must be at least 4KiB"));
        }
        let flow_log_max_files = file.flow_log_max_files.unwrap_or(DEFAULT_MAX_FILES);
        let flow_log_dir = pick(&flags.flow_log_dir, &file.flow_log_dir, &file_name)
            .map(|(v, _)| v)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FLOW_LOG_DIR));
        let retention_file = file.retention.unwrap_or_default();
        let retention_flows = retention(fname, "flows", retention_file.flows, DEFAULT_FLOWS_MAX_AGE)?;
        let retention_audit = retention(fname, "audit", retention_file.audit, DEFAULT_AUDIT_MAX_AGE)?;
        let hmac_key_file = file.evidence.and_then(|e| e.hmac_key_file);
        let hmac_key = hmac_key_file
            .as_deref()
            .map(HmacKey::from_file)
            .transpose()
            .map_err(|e| ConfigError::new(fname, "evidence.hmac_key_file", e.to_string()))?;
        let state_dir = match pick(&flags.state_dir, &file.state_dir, &file_name) {
            Some((v, src)) if v.as_os_str().is_empty() => {
                return Err(ConfigError::new(src, "state_dir", "must not be empty"));
            }
            Some((v, _)) => v,
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let kube_audit_log = match pick(&flags.kube_audit_log, &file.kube_audit_log, &file_name) {
            Some((v, src)) if v.as_os_str().is_empty() || v.is_dir() => {
                return Err(ConfigError::new(src, "kube_audit_log", format!("{v:?} is not a file path")));
            }
            other => other.map(|(v, _)| v),
        };
        let snapshots = match file.snapshots {
            None => None,
            Some(SnapshotsFile { archive: None, .. }) => {
                return Err(ConfigError::new(fname, "snapshots.archive", "required"));
            }
            Some(SnapshotsFile { archive: Some(archive), interval }) => {
                if cluster.is_none() {
                    return Err(ConfigError::new(
                        fname,
                        "snapshots",
                        "needs a cluster state source (cluster: kube|DIR)",
                    ));
                }
                let interval = duration(fname, "snapshots.interval", interval.as_deref().unwrap_or("24h"))?;
                if interval < Duration::from_secs(60) {
                    return Err(ConfigError::new(fname, "snapshots.interval", "must be at least 1m"));
                }
                Some(Snapshots { archive, interval })
            }
        };
        let exporters = export_config::resolve(
            file.exporters.as_deref(),
            &export_config::Defaults {
                flow_log_dir: flow_log_dir.clone(),
                max_file_size: flow_log_max_file_size,
                max_files: flow_log_max_files,
                spool_root: state_dir.join("spool"),
                log_types: export_config::AGENT_LOG_TYPES,
            },
        )
        .map_err(|p| ConfigError::new(fname, &p.field, p.reason))?;

        Ok(Settings {
            flow_log_dir,
            flush_interval,
            interfaces,
            cgroup,
            metrics_addr,
            node,
            aggregation_allowed,
            aggregation_denied,
            cluster,
            pod_deletion_grace,
            flow_table_entries,
            ring_buffer_size: ring_buffer_size as u32,
            idle_timeout,
            tcp_idle_timeout,
            max_connections,
            flow_log_max_file_size,
            flow_log_max_files,
            pin: pick(&flags.pin, &file.pin, &file_name).map(|(v, _)| v).unwrap_or(false),
            pin_path: pick(&flags.pin_path, &file.pin_path, &file_name)
                .map(|(v, _)| v)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
            exporters,
            retention_flows,
            retention_audit,
            hmac_key_file,
            hmac_key,
            state_dir,
            kube_audit_log,
            snapshots,
        })
    }
}

/// The YAML text of the file `name` (empty or blank: every key at its default).
fn parse_file_text<T: Default + serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        // serde names the offending key in its message ("unknown field `x`", "invalid type").
        let field = e.to_string().split('`').nth(1).map(str::to_owned).unwrap_or_else(|| "-".to_owned());
        ConfigError::new(name, &field, e.to_string())
    })
}

/// `flowaudit reporter --config FILE` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReporterFile {
    exporters: Option<Vec<RawExporter>>,
    state_dir: Option<PathBuf>,
    node_name: Option<String>,
}

/// `flowaudit reporter`'s configuration file, resolved: where the rows of finished reports go.
#[derive(Debug, Clone, PartialEq)]
pub struct ReporterSettings {
    /// `exporters:` (log type `reports` only); none without the key.
    pub exporters: Vec<ExporterConfig>,
    /// `node_name`: the `host` of the rows [default: the hostname].
    pub node: String,
    /// `state_dir`: the exporters' spools are `<state_dir>/spool/<name>` [default: `<archive>/.state`].
    pub state_dir: PathBuf,
}

impl ReporterSettings {
    /// Reads `path` (`None`: no file, nothing exported). `archive` gives the default `state_dir`
    /// (report names cannot start with `.`, so it never meets a report's directory).
    pub fn load(
        path: Option<&std::path::Path>,
        archive: &std::path::Path,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (name, file) = match path {
            None => (CLI.to_owned(), ReporterFile::default()),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(&name, "-", format!("cannot read: {e}")))?;
                let file: ReporterFile = parse_file_text(&name, &text)?;
                (name, file)
            }
        };
        let state_dir = file.state_dir.unwrap_or_else(|| archive.join(".state"));
        let node = match file.node_name {
            Some(n) if n.trim().is_empty() => return Err(ConfigError::new(&name, "node_name", "must not be empty")),
            Some(n) => n,
            None => hostname().unwrap_or_else(|| "unknown".into()),
        };
        let exporters = match &file.exporters {
            None => Vec::new(),
            Some(raw) => export_config::resolve(
                Some(raw),
                &export_config::Defaults {
                    flow_log_dir: PathBuf::from(DEFAULT_FLOW_LOG_DIR),
                    max_file_size: size(&name, "-", DEFAULT_MAX_FILE_SIZE)?,
                    max_files: DEFAULT_MAX_FILES,
                    spool_root: state_dir.join("spool"),
                    log_types: export_config::REPORTER_LOG_TYPES,
                },
            )
            .map_err(|p| ConfigError::new(&name, &p.field, p.reason))?,
        };
        Ok(Self { exporters, node, state_dir })
    }
}

/// Parses `15s`, `5m`, `2h`, `500ms`.
pub fn duration(source: &str, field: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim())
        .map_err(|e| ConfigError::new(source, field, format!("{value:?} is not a duration such as 15s or 5m ({e})")))
}

/// Parses `100MB`, `1MiB`, `4096`.
pub fn size(source: &str, field: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| ConfigError::new(source, field, format!("{value:?} is not a size such as 100MB ({e})")))
}

/// One log type's retention: the file's entry over the default age; `0` turns a limit off.
fn retention(
    source: &str,
    log: &str,
    entry: Option<RetentionEntry>,
    default_age: &str,
) -> Result<Retention, ConfigError> {
    let entry = entry.unwrap_or_default();
    let (age_src, age) = match &entry.max_age {
        Some(v) => (source, v.as_str()),
        None => (CLI, default_age),
    };
    let max_age = duration(age_src, &format!("retention.{log}.max_age"), age)?;
    let max_total_size = entry
        .max_total_size
        .as_deref()
        .map(|v| size(source, &format!("retention.{log}.max_total_size"), v))
        .transpose()?;
    Ok(Retention {
        max_age: (!max_age.is_zero()).then_some(max_age),
        max_total_size: max_total_size.filter(|&s| s > 0),
    })
}

fn globs(source: &str, values: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for value in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if value.is_empty() {
            return Err(ConfigError::new(source, "interfaces", "empty interface pattern"));
        }
        glob::Pattern::new(value).map_err(|e| ConfigError::new(source, "interfaces", format!("{value:?}: {e}")))?;
        out.push(value.to_owned());
    }
    Ok(out)
}

/// Why `path` cannot take the `cgroup_skb` programs, if it cannot: it must be a directory of the
/// cgroup v2 hierarchy (the kernel's own refusal, "bad file descriptor", would not say so).
pub fn cgroup2_dir_problem(path: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Some(format!("{} holds a NUL byte", path.display()));
    };
    // SAFETY: an all-zero `statfs` is valid; the kernel fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer of the right type.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Some(format!("{}: {}", path.display(), std::io::Error::last_os_error()));
    }
    if st.f_type != libc::CGROUP2_SUPER_MAGIC {
        let mount = std::fs::read_to_string("/proc/mounts").ok().and_then(|m| cgroup2_mount(&m));
        return Some(format!(
            "{} is not a cgroup v2 directory ({})",
            path.display(),
            match mount {
                Some(m) => format!("cgroup2 is mounted at {}", m.display()),
                None => "no cgroup2 mount in /proc/mounts".to_owned(),
            }
        ));
    }
    None
}

/// The cgroup v2 mount point listed in `mounts` (the text of `/proc/mounts`).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: RunFlags) -> Result<Settings, ConfigError> {
        Settings::resolve(&flags, || Some("/sys/fs/cgroup".into()), || Some("node-a".into()))
    }

    fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowaudit.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn resolve_text(text: &str) -> Result<Settings, ConfigError> {
        Settings::resolve_text(
            &RunFlags::default(),
            "x.yaml",
            text,
            || Some("/sys/fs/cgroup".into()),
            || Some("node-a".into()),
        )
    }

    /// `resolve_text` (the `config` fuzz target's entry point) is what `resolve` runs on the
    /// file's text: the same settings, and errors that name the file.
    #[test]
    fn resolve_text_is_resolve_on_the_files_text() {
        let text = "flush_interval: 5s\nnode: n1\nring_buffer_size: 64KiB\n";
        let (_dir, path) = write_config(text);
        let file = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap();
        let given = resolve_text(text).unwrap();
        assert_eq!(
            (file.flush_interval, file.node, file.ring_buffer_size),
            (given.flush_interval, given.node, given.ring_buffer_size)
        );
        let err = resolve_text("bogus: 1\n").unwrap_err();
        assert_eq!((err.source_name.as_str(), err.field.as_str()), ("x.yaml", "bogus"));
    }

    #[test]
    fn defaults() {
        let s = resolve(RunFlags::default()).unwrap();
        assert_eq!(s.flow_log_dir, PathBuf::from("/var/log/flowaudit"));
        assert_eq!(s.flush_interval, Duration::from_secs(15));
        assert!(s.interfaces.is_empty());
        assert_eq!(s.metrics_addr, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(s.node, "node-a");
        assert_eq!(s.cgroup, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(s.flow_log_max_file_size, 100_000_000);
        assert_eq!(s.flow_log_max_files, 5);
        assert_eq!(s.ring_buffer_size, 1 << 20);
        assert_eq!(s.max_connections, 262_144);
        assert_eq!(
            (s.aggregation_allowed, s.aggregation_denied),
            (AggregationLevel::PrefixName, AggregationLevel::NoSourcePort)
        );
        assert_eq!(s.cluster, None);
        assert_eq!(s.pod_deletion_grace, Duration::from_secs(60));
        assert!(!s.pin);
        assert_eq!(s.pin_path, PathBuf::from("/sys/fs/bpf/flowaudit"));
        let day = Duration::from_secs(86_400);
        assert_eq!(s.retention_flows, Retention { max_age: Some(8 * day), max_total_size: None });
        assert_eq!(s.retention_audit, Retention { max_age: Some(91 * day), max_total_size: None });
        assert!(s.hmac_key.is_none());
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/flowaudit"));
        assert_eq!(s.kube_audit_log, None);
    }

    #[test]
    fn retention_and_evidence_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hmac.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        let (_d, path) = write_config(&format!(
            "retention:\n  flows: {{max_age: 2d, max_total_size: 10GiB}}\n  audit: {{max_age: 0s}}\nevidence:\n  hmac_key_file: {}\n",
            key.display()
        ));
        let s = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap();
        assert_eq!(
            s.retention_flows,
            Retention { max_age: Some(Duration::from_secs(2 * 86_400)), max_total_size: Some(10 << 30) }
        );
        assert_eq!(s.retention_audit, Retention::default(), "0s turns the age limit off");
        assert!(s.hmac_key.is_some());
        assert!(!format!("{s:?}").contains("0123456789abcdef"), "Debug must not print the key");

        let (_d, path) = write_config("retention:\n  flows: {max_agee: 2d}\n");
        let err = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "max_agee");
        let (_d, path) = write_config("retention:\n  audit: {max_total_size: lots}\n");
        let err = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "retention.audit.max_total_size");
        let (_d, path) = write_config("evidence:\n  hmac_key_file: /no/such/key\n");
        let err = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "evidence.hmac_key_file");
        assert!(err.reason.contains("/no/such/key"), "{err}");
    }

    #[test]
    fn snapshots_need_an_archive_and_a_cluster() {
        let (_d, path) = write_config("cluster: /tmp/m\nsnapshots: {archive: /var/lib/flowaudit/archive}\n");
        let s = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap();
        let want = Snapshots { archive: "/var/lib/flowaudit/archive".into(), interval: Duration::from_secs(86_400) };
        assert_eq!(s.snapshots, Some(want));
        for (text, field, reason) in [
            ("cluster: /tmp/m\nsnapshots: {interval: 1h}\n", "snapshots.archive", "required"),
            ("snapshots: {archive: /a}\n", "snapshots", "needs a cluster state source"),
            ("cluster: /tmp/m\nsnapshots: {archive: /a, interval: 10s}\n", "snapshots.interval", "at least 1m"),
            ("cluster: /tmp/m\nsnapshots: {archive: /a, every: 1h}\n", "every", "unknown field `every`"),
        ] {
            let (_d, path) = write_config(text);
            let e = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap_err();
            assert!(e.field.starts_with(field) && e.reason.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn state_dir_and_kube_audit_log_from_file_and_flag() {
        let (_d, path) = write_config("state_dir: /tmp/st\nkube_audit_log: /var/log/kube/audit.log\n");
        let s = resolve(RunFlags { config: Some(path.clone()), ..Default::default() }).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/tmp/st"));
        assert_eq!(s.kube_audit_log, Some(PathBuf::from("/var/log/kube/audit.log")));
        let s = resolve(RunFlags { config: Some(path), state_dir: Some("/x".into()), ..Default::default() }).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/x"));
        let err = resolve(RunFlags { kube_audit_log: Some("/".into()), ..Default::default() }).unwrap_err();
        assert_eq!((err.field.as_str(), err.source_name.as_str()), ("kube_audit_log", "command line"));
    }

    #[test]
    fn pin_from_file_and_flag() {
        let (_d, path) = write_config("pin: true\npin_path: /sys/fs/bpf/other\n");
        let s = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap();
        assert!(s.pin);
        assert_eq!(s.pin_path, PathBuf::from("/sys/fs/bpf/other"));
        let s = resolve(RunFlags { pin: Some(true), pin_path: Some("/x".into()), ..Default::default() }).unwrap();
        assert!(s.pin);
        assert_eq!(s.pin_path, PathBuf::from("/x"));
    }

    #[test]
    fn flags_win_over_file() {
        let (_d, path) = write_config("flush_interval: 5m\nnode: from-file\ninterfaces: [eth*]\n");
        let s = resolve(RunFlags { config: Some(path), node: Some("from-flag".into()), ..Default::default() }).unwrap();
        assert_eq!(s.flush_interval, Duration::from_secs(300));
        assert_eq!(s.node, "from-flag");
        assert_eq!(s.interfaces, vec!["eth*"]);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let (_d, path) = write_config("flush_intervall: 5s\n");
        let err = resolve(RunFlags { config: Some(path.clone()), ..Default::default() }).unwrap_err();
        assert_eq!(err.source_name, path.display().to_string());
        assert_eq!(err.field, "flush_intervall");
        assert!(err.reason.contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let (_d, path) = write_config("ring_buffer_size: 5000\n");
        let err = resolve(RunFlags { config: Some(path), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "ring_buffer_size");
        let err = resolve(RunFlags { flush_interval: Some("soon".into()), ..Default::default() }).unwrap_err();
        assert_eq!((err.source_name.as_ref(), err.field.as_str()), ("command line", "flush_interval"));
        let err = resolve(RunFlags { aggregation_allowed: Some(4), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "aggregation_allowed");
        let err = resolve(RunFlags { cluster: Some("/no/such/dir".into()), ..Default::default() }).unwrap_err();
        assert_eq!((err.field.as_str(), err.source_name.as_ref()), ("cluster", "command line"));
        let err = resolve(RunFlags { aggregation_denied: Some(7), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "aggregation_denied");
        let err = resolve(RunFlags { interfaces: Some(vec!["veth[".into()]), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "interfaces");
        let err = resolve(RunFlags { metrics_addr: Some("localhost".into()), ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "metrics_addr");
    }

    #[test]
    fn interface_flag_splits_commas() {
        let s = resolve(RunFlags { interfaces: Some(vec!["fa-*, eth0".into()]), ..Default::default() }).unwrap();
        assert_eq!(s.interfaces, vec!["fa-*", "eth0"]);
    }

    /// A document of `deploy/base/` (the kustomize base), parsed.
    fn deploy_manifest(file: &str) -> serde_yaml_ng::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The example config of the DaemonSet's ConfigMap goes through the real parser, with the
    /// flags the DaemonSet passes, so the example cannot rot. A key that is also one of those
    /// flags is refused: flags win, so the key would be silently ignored.
    #[test]
    fn deploy_configmap_example_is_a_valid_config() {
        let configmap = deploy_manifest("configmap.yaml");
        assert_eq!(configmap["kind"].as_str(), Some("ConfigMap"));
        assert_eq!(configmap["metadata"]["name"].as_str(), Some("flowaudit-config"));
        let text = configmap["data"]["config.yaml"].as_str().expect("data.\"config.yaml\" is a string");

        let daemonset = deploy_manifest("daemonset.yaml");
        let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .expect("the DaemonSet's container has args")
            .iter()
            .map(|a| a.as_str().expect("args are strings"))
            .collect();
        let flag_keys: Vec<String> =
            args.iter().filter_map(|a| a.strip_prefix("--")).map(|f| f.replace('-', "_")).collect();
        assert!(flag_keys.iter().any(|k| k == "config"), "the DaemonSet passes --config: {args:?}");
        let example: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(text).expect("config.yaml is a mapping");
        let keys: Vec<&str> = example.keys().map(|k| k.as_str().expect("keys are strings")).collect();
        for key in &keys {
            assert!(
                !flag_keys.iter().any(|f| f == key),
                "config.yaml sets `{key}`, which the DaemonSet's flags override"
            );
        }

        let (_d, path) = write_config(text);
        // What the DaemonSet passes next to --config (`$(NODE_IP)`/`$(NODE_NAME)` expanded).
        let flags = RunFlags {
            config: Some(path),
            cluster: Some("kube".into()),
            metrics_addr: Some("10.0.0.7:9464".into()),
            node: Some("node-7".into()),
            ..Default::default()
        };
        let s = resolve(flags).unwrap_or_else(|e| panic!("deploy/base/configmap.yaml config.yaml: {e}"));
        assert_eq!(s.cluster, Some(ClusterSource::Kube));
        assert_eq!(s.node, "node-7");
        assert_eq!(s.exporters.len(), 1, "the example keeps the local file exporter");
        // The example shows every key of the file that the DaemonSet does not pass as a flag,
        // except `cgroup` (the mounted node root is the default there).
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "aggregation_allowed",
                "aggregation_denied",
                "exporters",
                "flow_log_dir",
                "flow_log_max_file_size",
                "flow_log_max_files",
                "flow_table_entries",
                "flush_interval",
                "idle_timeout",
                "interfaces",
                "max_connections",
                "pod_deletion_grace",
                "retention",
                "ring_buffer_size",
                "state_dir",
                "tcp_idle_timeout",
            ]
        );
        // The flow logs go to the hostPath the DaemonSet mounts.
        let mounts = container["volumeMounts"].as_sequence().expect("volumeMounts");
        assert!(
            mounts.iter().any(|m| m["mountPath"].as_str() == Some(&*s.flow_log_dir.to_string_lossy())),
            "flow_log_dir {} is not a volume of the DaemonSet",
            s.flow_log_dir.display()
        );
    }

    #[test]
    fn a_cgroup_outside_cgroup2_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let flags = RunFlags { cgroup: Some(dir.path().to_owned()), ..Default::default() };
        let e = resolve(flags).unwrap_err();
        assert_eq!((e.source_name.as_str(), e.field.as_str()), ("command line", "cgroup"));
        assert!(e.reason.starts_with(&format!("{} is not a cgroup v2 directory (", dir.path().display())), "{e}");
        let missing = dir.path().join("gone");
        let e = resolve(RunFlags { cgroup: Some(missing.clone()), ..Default::default() }).unwrap_err();
        assert_eq!(e.reason, format!("{}: No such file or directory (os error 2)", missing.display()));
        // The cgroup2 mount itself is accepted, where this machine has one.
        if let Some(root) = std::fs::read_to_string("/proc/mounts").ok().and_then(|m| cgroup2_mount(&m)) {
            let s = resolve(RunFlags { cgroup: Some(root.clone()), ..Default::default() }).unwrap();
            assert_eq!(s.cgroup, root);
        }
    }

    #[test]
    fn finds_cgroup2_mount() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
