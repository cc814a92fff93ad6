//! flowaudit agent: eBPF flow capture on cgroup and TC hooks, flow logs, metrics.
//!
//! Pipeline (one way; wired only in [`pipeline`]):
//! `capture` (kernel → observations) → `aggregate` (→ flow records) → `output` (→ `flows.log`).
//! Stages share only the types in [`model`]; `config`, `telemetry` and `privilege` sit beside them.

pub mod aggregate;
pub mod attribute;
pub mod audit;
pub mod capture;
pub mod cluster;
pub mod config;
pub mod enrich;
pub mod explain;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod privilege;
pub mod rollup;
pub mod telemetry;
