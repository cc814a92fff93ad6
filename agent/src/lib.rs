//! flowaudit agent: eBPF flow capture on cgroup and TC hooks, flow logs, metrics.
//!
//! Pipeline (one way; wired only in [`pipeline`]):
//! `capture` (kernel → observations) → `aggregate` (→ flow records) → `output` (→ `flows.log`).
//! Stages share only the types in [`model`]; `config`, `telemetry` and `privilege` sit beside them.
//! Beside the flow path, [`audit`] turns cluster state versions (and the kube-apiserver's audit
//! log) into policy change events, which the pipeline writes to `audit.log`.
//! Off the flow path: [`report`] makes compliance reports from files (`flowaudit report`), and
//! [`reporter`] runs them on GlobalReports' schedules (`flowaudit reporter`). [`clickhouse`] is
//! the table the `clickhouse` exporter writes and reports read with `--store`.

pub mod aggregate;
pub mod attribute;
pub mod audit;
pub mod capture;
pub mod clickhouse;
pub mod cluster;
pub mod config;
pub mod enrich;
pub mod explain;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod privilege;
pub mod report;
pub mod reporter;
pub mod rollup;
pub mod telemetry;
