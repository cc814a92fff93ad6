//! rollup: applies the configured aggregation level to attributed records.
//!
//! Takes: level-0 records (one per connection and reporter) with their verdicts. Gives: records
//! at Calico's aggregation level for their action (allowed and denied flows have their own
//! level): 0 keeps them; 1 drops the source port; 2 also drops addresses and names, grouping by
//! `*_name_aggr`; 3 also drops the destination port and service port. Counts are summed,
//! `num_flows` counts the connections, labels are the ones every member shares, `observed`
//! becomes `mixed` where members differ, `enforcement` is the worst member's and
//! `num_violations` counts the violating members. Must never: merge records whose action, reporter,
//! policies or any field kept at that level differ.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Action, AggregationLevel, FlowRecord, Observed, RecordLabels, record_id};

/// The levels to apply.
#[derive(Clone, Debug)]
pub struct RollupConfig {
    /// Level of allowed records.
    pub allowed: AggregationLevel,
    /// Level of denied records.
    pub denied: AggregationLevel,
}

/// `record` with the fields its level drops replaced by their aggregated values.
fn masked(record: &FlowRecord, level: AggregationLevel) -> FlowRecord {
    let mut r = record.clone();
    if level >= AggregationLevel::NoSourcePort {
        r.source_port = None;
    }
    if level >= AggregationLevel::PrefixName {
        r.source_ip = None;
        r.dest_ip = None;
        r.source_name = "-".into();
        r.dest_name = "-".into();
    }
    if level >= AggregationLevel::NoDestPorts {
        r.dest_port = None;
        r.dest_service_port = "-".into();
    }
    r
}

/// The fields that must be equal for two masked records to merge.
fn key(r: &FlowRecord) -> String {
    let mut k = r.clone();
    k.id.clear();
    k.bytes_in = 0;
    k.bytes_out = 0;
    k.packets_in = 0;
    k.packets_out = 0;
    k.num_flows = 0;
    k.num_flows_started = 0;
    k.num_flows_completed = 0;
    k.num_established = 0;
    k.num_attempted = 0;
    k.num_rejected = 0;
    k.observed = Observed::Mixed;
    k.source_labels = RecordLabels::Unknown;
    k.dest_labels = RecordLabels::Unknown;
    k.source_cgroup_id = None;
    k.host_network = false;
    k.enforcement = crate::model::Enforcement::Consistent;
    k.num_violations = 0;
    serde_json::to_string(&k).expect("records serialize")
}

fn shared_labels(a: &RecordLabels, b: &RecordLabels) -> RecordLabels {
    match (a, b) {
        _ if a == b => a.clone(),
        (RecordLabels::List(x), RecordLabels::List(y)) => {
            RecordLabels::List(x.iter().filter(|l| y.contains(l)).cloned().collect())
        }
        _ => RecordLabels::Unknown,
    }
}

/// Applies the levels; the output is sorted like the input's first members.
pub fn rollup(records: Vec<FlowRecord>, cfg: &RollupConfig) -> Vec<FlowRecord> {
    // Level 0 for both actions keeps every record as it is: no second copy of a batch.
    if cfg.allowed == AggregationLevel::FiveTuple && cfg.denied == AggregationLevel::FiveTuple {
        return records;
    }
    let mut groups: BTreeMap<usize, FlowRecord> = BTreeMap::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, record) in records.into_iter().enumerate() {
        let level = match record.action {
            Action::Allow => cfg.allowed,
            Action::Deny => cfg.denied,
        };
        if level == AggregationLevel::FiveTuple {
            groups.insert(i, record);
            continue;
        }
        let m = masked(&record, level);
        let k = key(&m);
        match index.get(&k) {
            None => {
                let mut first = m;
                first.id = record_id(&k);
                index.insert(k, i);
                groups.insert(i, first);
            }
            Some(&at) => {
                let g = groups.get_mut(&at).expect("group exists");
                g.bytes_in += m.bytes_in;
                g.bytes_out += m.bytes_out;
                g.packets_in += m.packets_in;
                g.packets_out += m.packets_out;
                g.num_flows += m.num_flows;
                g.num_flows_started += m.num_flows_started;
                g.num_flows_completed += m.num_flows_completed;
                g.num_established += m.num_established;
                g.num_attempted += m.num_attempted;
                g.num_rejected += m.num_rejected;
                if g.observed != m.observed {
                    g.observed = Observed::Mixed;
                }
                if g.source_cgroup_id != m.source_cgroup_id {
                    g.source_cgroup_id = None;
                }
                g.host_network |= m.host_network;
                g.enforcement = g.enforcement.max(m.enforcement);
                g.num_violations += m.num_violations;
                g.source_labels = shared_labels(&g.source_labels, &m.source_labels);
                g.dest_labels = shared_labels(&g.dest_labels, &m.dest_labels);
            }
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Enforcement, RecordLabels};

    fn pod_record(src_pod: &str, sport: u16, dport: u16, labels: &[&str]) -> FlowRecord {
        let mut r = FlowRecord::sample(&format!("10.0.0.{}", sport % 200), sport, "10.0.9.9", dport);
        r.source_name = src_pod.into();
        r.source_name_aggr = "web-*".into();
        r.source_namespace = "shop".into();
        r.source_type = "wep".into();
        r.source_labels = RecordLabels::List(labels.iter().map(|s| s.to_string()).collect::<Arc<[String]>>());
        r.dest_name = "db".into();
        r.dest_name_aggr = "db".into();
        r
    }

    fn cfg(allowed: AggregationLevel, denied: AggregationLevel) -> RollupConfig {
        RollupConfig { allowed, denied }
    }

    #[test]
    fn level_two_groups_pods_by_prefix_and_keeps_shared_labels() {
        let records = vec![
            pod_record("web-1", 40001, 5432, &["app=web", "pod=1"]),
            pod_record("web-2", 40002, 5432, &["app=web", "pod=2"]),
            pod_record("web-3", 40003, 5433, &["app=web"]),
        ];
        let out = rollup(records, &cfg(AggregationLevel::PrefixName, AggregationLevel::FiveTuple));
        assert_eq!(out.len(), 2, "the destination port still splits");
        let r = &out[0];
        assert_eq!((r.source_ip, r.source_port, r.dest_ip), (None, None, None));
        assert_eq!((&*r.source_name, &*r.source_name_aggr, &*r.dest_name), ("-", "web-*", "-"));
        assert_eq!((r.num_flows, r.packets_out, r.bytes_out), (2, 4, 400));
        assert_eq!(r.source_labels, RecordLabels::List(vec!["app=web".to_string()].into()));
        assert_eq!(out[1].dest_port, Some(5433));
    }

    #[test]
    fn level_three_drops_destination_ports_and_never_merges_across_actions() {
        let mut denied = pod_record("web-4", 40004, 22, &["app=web"]);
        denied.action = Action::Deny;
        denied.enforcement = Enforcement::Violation;
        denied.num_violations = 1;
        let mut denied2 = pod_record("web-5", 40005, 23, &["app=web"]);
        denied2.action = Action::Deny;
        let records = vec![
            pod_record("web-1", 40001, 5432, &["app=web"]),
            pod_record("web-2", 40002, 5433, &["app=web"]),
            denied,
            denied2,
        ];
        let out = rollup(records, &cfg(AggregationLevel::NoDestPorts, AggregationLevel::NoDestPorts));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].action, out[0].dest_port, out[0].num_flows), (Action::Allow, None, 2));
        assert_eq!(
            (out[1].action, out[1].num_flows, out[1].enforcement, out[1].num_violations),
            (Action::Deny, 2, Enforcement::Violation, 1)
        );
        assert_ne!(out[0].id, out[1].id);
    }

    #[test]
    fn level_zero_keeps_records_as_they_are() {
        let records = vec![pod_record("web-1", 40001, 5432, &[]), pod_record("web-2", 40002, 5432, &[])];
        let out = rollup(records.clone(), &cfg(AggregationLevel::FiveTuple, AggregationLevel::FiveTuple));
        assert_eq!(out, records);
    }

    #[test]
    fn different_traces_do_not_merge() {
        let mut a = pod_record("web-1", 40001, 5432, &[]);
        a.policies.enforced_policies = vec!["0|default|knp:shop/a|allow|0".to_string()].into();
        let mut b = pod_record("web-2", 40002, 5432, &[]);
        b.policies.enforced_policies = vec!["0|default|knp:shop/b|allow|0".to_string()].into();
        assert_eq!(rollup(vec![a, b], &cfg(AggregationLevel::PrefixName, AggregationLevel::PrefixName)).len(), 2);
    }
}
