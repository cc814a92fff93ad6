//! The network-access report: per in-scope endpoint, whether policy protected it for the whole
//! interval, what its policies exposed it to at any time, and what traffic it really had.
//!
//! Takes: an [`Inventory`] (endpoints in scope, protection and exposure flags from the replayed
//! interval, [`super::inventory`]) and a [`FlowSource`] (flow-log directories or a store).
//! Gives: a [`NetworkAccess`] with Calico's `summary.csv` and `endpoints.csv` (reference §3.5),
//! plus columns Calico lacked, computed from the flow records. Must never: count a record twice
//! for one question (ingress is answered by `dst` records only, egress by `src` records only, so
//! a cluster's store holding both nodes' records gives what one node's files give), or read
//! protection from the flows (that is the policies' part).
//!
//! Flow-derived columns, for an endpoint E:
//! - records of E's ingress: `reporter: dst` records whose destination is E; of its egress:
//!   `reporter: src` records whose source is E. A record names E exactly (type, namespace,
//!   name); records aggregated at level 2 name it by its generateName prefix (`web-7d9f*`), or
//!   by its name when it has none.
//!   As in Calico, exact names are tried first and the prefix only when no record names E
//!   exactly; the prefix used is `trafficAggregationPrefix`, and then every pod of the prefix
//!   shares the prefix's records.
//! - `endpointsGeneratingTrafficToThisEndpoint` (`...ReceivingTrafficFromThisEndpoint`): the
//!   peers of those records, denied attempts included (Calico's reading): `Pod.v1(ns/name)`,
//!   `Pod.v1(ns/prefix*)`, `HostEndpoint(name)`, `NetworkSet(ns/name)`,
//!   `GlobalNetworkSet(name)`, `Public`, `Private`; `;`-joined, sorted.
//! - `observedIngressFromInternet` (and the three others): a record of that direction with a
//!   peer of type `net` named `pub` (another namespace: a peer with a namespace other than E's)
//!   where traffic got through: a connection was established, or the reporter allowed it and
//!   packets reached E (ingress) or left E (egress).
//! - `deniedFlows`: connections in denied records of either direction; `enforcementViolations`:
//!   their `num_violations` (denied, yet established), both directions.
//!
//! `fwd` records (traffic that only passed through a node) name no endpoint of the node and are
//! not read.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{
    Kind, NamedReport, Rendered, ReportError, Table, escape,
    exposure::Exposure,
    flows::{FlowRow, FlowSource, RowAction, RowEnd, RowReporter},
    format_time, html_page,
    inventory::{EndpointRow, Inventory, join, yes},
    summary_columns,
};

/// `summary.csv` columns: Calico's, then flowaudit's (the observed and flow counts).
pub const SUMMARY_COLUMNS: &[&str] = &summary_columns![
    "endpointsNumIngressProtected",
    "endpointsNumEgressProtected",
    "endpointsNumIngressUnprotected",
    "endpointsNumEgressUnprotected",
    "endpointsNumIngressFromInternet",
    "endpointsNumEgressToInternet",
    "endpointsNumIngressFromOtherNamespace",
    "endpointsNumEgressToOtherNamespace",
    "endpointsNumEnvoyEnabled",
    "endpointsNumObservedIngressFromInternet",
    "endpointsNumObservedEgressToInternet",
    "endpointsNumObservedIngressFromOtherNamespace",
    "endpointsNumObservedEgressToOtherNamespace",
    "deniedFlows",
    "enforcementViolations",
];

/// `endpoints.csv` columns: Calico's template, then flowaudit's.
pub const ENDPOINT_COLUMNS: &[&str] = &[
    "endpoint",
    "ingressProtected",
    "egressProtected",
    "ingressFromInternet",
    "egressToInternet",
    "ingressFromOtherNamespace",
    "egressToOtherNamespace",
    "envoyEnabled",
    "appliedPolicies",
    "trafficAggregationPrefix",
    "endpointsGeneratingTrafficToThisEndpoint",
    "endpointsReceivingTrafficFromThisEndpoint",
    "observedIngressFromInternet",
    "observedEgressToInternet",
    "observedIngressFromOtherNamespace",
    "observedEgressToOtherNamespace",
    "deniedFlows",
    "enforcementViolations",
];

/// What one direction's records of an endpoint showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// The peers (rendered).
    pub peers: BTreeSet<String>,
    /// Traffic got through with a `pub` peer.
    pub internet: bool,
    /// Traffic got through with a peer of another namespace.
    pub other_namespace: bool,
    /// Connections in denied records.
    pub denied: u64,
    /// Violations in the records.
    pub violations: u64,
    /// Records read.
    pub records: u64,
}

impl Traffic {
    fn add(&mut self, row: &FlowRow, peer: &RowEnd, own_namespace: &str, ingress: bool) {
        self.records += 1;
        self.peers.insert(render_peer(peer));
        let packets = if ingress { row.packets_in } else { row.packets_out };
        let through = row.num_established > 0 || (row.action == RowAction::Allow && packets > 0);
        if through {
            self.internet |= peer.kind == "net" && peer.name_aggr == "pub";
            self.other_namespace |= peer.namespace != "-" && peer.namespace != own_namespace;
        }
        if row.action == RowAction::Deny {
            self.denied += row.num_flows;
        }
        self.violations += row.num_violations;
    }
}

/// A flow-log end as the report names it (reference §3.5).
pub fn render_peer(end: &RowEnd) -> String {
    let name = if end.name == "-" { &end.name_aggr } else { &end.name };
    match end.kind.as_str() {
        "wep" => format!("Pod.v1({}/{name})", end.namespace),
        "hep" => format!("HostEndpoint({name})"),
        "ns" if end.namespace == "-" => format!("GlobalNetworkSet({name})"),
        "ns" => format!("NetworkSet({}/{name})", end.namespace),
        _ if end.name_aggr == "pub" => "Public".into(),
        _ => "Private".into(),
    }
}

/// One in-scope endpoint of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRow {
    /// The inventory's row: protection, exposure, policies.
    pub endpoint: EndpointRow,
    /// The prefix its records were found by, when not by its name.
    pub aggregation_prefix: Option<String>,
    /// Its ingress (`dst` records).
    pub ingress: Traffic,
    /// Its egress (`src` records).
    pub egress: Traffic,
}

impl AccessRow {
    /// What the traffic showed, as exposure flags.
    pub fn observed(&self) -> Exposure {
        Exposure {
            ingress_from_internet: self.ingress.internet,
            egress_to_internet: self.egress.internet,
            ingress_from_other_namespace: self.ingress.other_namespace,
            egress_to_other_namespace: self.egress.other_namespace,
        }
    }
}

/// The report.
#[derive(Clone, Debug)]
pub struct NetworkAccess {
    /// The inventory it extends (interval, selection, states).
    pub inventory: Inventory,
    /// In-scope endpoints, by ResourceID.
    pub rows: Vec<AccessRow>,
    /// What the flows came from.
    pub flow_source: String,
    /// Records in the interval.
    pub records: u64,
    /// Distinct (source, destination) pairs of the in-scope endpoints' records.
    pub pairs: BTreeSet<(String, String)>,
}

/// Per endpoint and direction: records found by exact name and by prefix.
#[derive(Default)]
struct Found {
    exact: [Traffic; 2],
    prefix: [Traffic; 2],
}

/// Computes the report: the inventory's endpoints, then one pass over the flow records.
pub fn build(inventory: Inventory, flows: &dyn FlowSource) -> Result<NetworkAccess, ReportError> {
    let endpoints = &inventory.endpoints;
    let mut exact: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut by_prefix: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        let f = &e.flow_name;
        exact.insert((f.kind, &f.namespace, &f.name), i);
        if f.kind == "wep" {
            by_prefix.entry((&f.namespace, f.aggregated())).or_default().push(i);
        }
    }
    let mut found: Vec<Found> = endpoints.iter().map(|_| Found::default()).collect();
    let mut pairs = BTreeSet::new();
    let records = flows.scan(inventory.range, &mut |row| {
        let (src, dst) = (row.source(), row.dest());
        let (own, peer, dir) = match row.reporter {
            RowReporter::Dst => (&dst, &src, 0),
            RowReporter::Src => (&src, &dst, 1),
            RowReporter::Fwd => return,
        };
        let mut matched = false;
        if own.name != "-"
            && let Some(&i) = exact.get(&(own.kind.as_str(), own.namespace.as_str(), own.name.as_str()))
        {
            found[i].exact[dir].add(&row, peer, &endpoints[i].flow_name.namespace, dir == 0);
            matched = true;
        } else if own.name == "-"
            && own.kind == "wep"
            && let Some(members) = by_prefix.get(&(own.namespace.as_str(), own.name_aggr.as_str()))
        {
            for &i in members {
                found[i].prefix[dir].add(&row, peer, &endpoints[i].flow_name.namespace, dir == 0);
            }
            matched = true;
        }
        if matched {
            pairs.insert((render_peer(&src), render_peer(&dst)));
        }
    })?;
    let rows = endpoints
        .iter()
        .zip(found)
        .map(|(e, f)| {
            let by_name = f.exact.iter().any(|t| t.records > 0);
            let by_prefix = !by_name && f.prefix.iter().any(|t| t.records > 0);
            let [ingress, egress] = if by_name { f.exact } else { f.prefix };
            AccessRow {
                endpoint: e.clone(),
                aggregation_prefix: by_prefix.then(|| e.flow_name.aggregated().to_owned()),
                ingress,
                egress,
            }
        })
        .collect();
    Ok(NetworkAccess { rows, flow_source: flows.describe(), records, pairs, inventory })
}

impl NetworkAccess {
    fn count(&self, f: impl Fn(&AccessRow) -> bool) -> usize {
        self.rows.iter().filter(|r| f(r)).count()
    }

    fn total(&self, f: impl Fn(&AccessRow) -> u64) -> u64 {
        self.rows.iter().map(f).sum()
    }

    /// `summary.csv`.
    pub fn summary(&self) -> Table {
        let mut t = Table::new("summary.csv", SUMMARY_COLUMNS);
        let mut row = NamedReport::selection_columns(self.inventory.report.as_ref(), &self.inventory.range);
        let n = self.rows.len();
        let (ing, eg) = (self.count(|r| r.endpoint.ingress_protected), self.count(|r| r.endpoint.egress_protected));
        let x = |f: fn(&Exposure) -> bool| self.count(|r| f(&r.endpoint.exposure)).to_string();
        let o = |f: fn(&Exposure) -> bool| self.count(|r| f(&r.observed())).to_string();
        row.extend([
            ing.to_string(),
            eg.to_string(),
            (n - ing).to_string(),
            (n - eg).to_string(),
            x(|e| e.ingress_from_internet),
            x(|e| e.egress_to_internet),
            x(|e| e.ingress_from_other_namespace),
            x(|e| e.egress_to_other_namespace),
            self.count(|r| r.endpoint.envoy_enabled).to_string(),
            o(|e| e.ingress_from_internet),
            o(|e| e.egress_to_internet),
            o(|e| e.ingress_from_other_namespace),
            o(|e| e.egress_to_other_namespace),
            self.total(|r| r.ingress.denied + r.egress.denied).to_string(),
            self.total(|r| r.ingress.violations + r.egress.violations).to_string(),
        ]);
        t.push(row);
        t
    }

    /// `endpoints.csv`.
    pub fn endpoints_table(&self) -> Table {
        let mut t = Table::new("endpoints.csv", ENDPOINT_COLUMNS);
        for r in &self.rows {
            let (e, x, o) = (&r.endpoint, &r.endpoint.exposure, r.observed());
            t.push(vec![
                e.endpoint.clone(),
                yes(e.ingress_protected),
                yes(e.egress_protected),
                yes(x.ingress_from_internet),
                yes(x.egress_to_internet),
                yes(x.ingress_from_other_namespace),
                yes(x.egress_to_other_namespace),
                yes(e.envoy_enabled),
                join(&e.applied_policies),
                r.aggregation_prefix.clone().unwrap_or_default(),
                join(&r.ingress.peers),
                join(&r.egress.peers),
                yes(o.ingress_from_internet),
                yes(o.egress_to_internet),
                yes(o.ingress_from_other_namespace),
                yes(o.egress_to_other_namespace),
                (r.ingress.denied + r.egress.denied).to_string(),
                (r.ingress.violations + r.egress.violations).to_string(),
            ]);
        }
        t
    }
}

/// A FlowEndpoint of Calico's ReportData from a rendered peer: `Pod.v1(ns/web-*)` →
/// `{kind: Pod, namespace: ns, name: web-, nameIsAggregationPrefix: true}`.
fn flow_endpoint(rendered: &str) -> Value {
    let Some((kind, rest)) = rendered.split_once('(') else { return json!({"kind": rendered}) };
    let kind = kind.trim_end_matches(".v1");
    let inner = rest.trim_end_matches(')');
    let (namespace, name) = inner.split_once('/').unwrap_or(("", inner));
    let prefix = name.strip_suffix('*');
    json!({
        "kind": kind,
        "name": prefix.unwrap_or(name),
        "nameIsAggregationPrefix": prefix.is_some(),
        "namespace": namespace,
    })
}

impl Rendered for NetworkAccess {
    fn kind(&self) -> Kind {
        Kind::NetworkAccess
    }

    fn exported(&self) -> Vec<Table> {
        vec![self.summary(), self.endpoints_table()]
    }

    fn report_data(&self, generated: Timestamp) -> Value {
        let inv = &self.inventory;
        let flags = |x: &Exposure| {
            json!({
                "ingressFromInternet": x.ingress_from_internet,
                "egressToInternet": x.egress_to_internet,
                "ingressFromOtherNamespace": x.ingress_from_other_namespace,
                "egressToOtherNamespace": x.egress_to_other_namespace,
            })
        };
        let endpoints: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let e = &r.endpoint;
                let mut v = e.report_data();
                let extra = json!({
                    "flowLogAggregationName": e.flow_name.aggregated(),
                    "trafficAggregationPrefix": r.aggregation_prefix,
                    "endpointsGeneratingTrafficToThisEndpoint": r.ingress.peers,
                    "endpointsReceivingTrafficFromThisEndpoint": r.egress.peers,
                    "observed": flags(&r.observed()),
                    "deniedFlows": r.ingress.denied + r.egress.denied,
                    "enforcementViolations": r.ingress.violations + r.egress.violations,
                });
                if let (Value::Object(fields), Value::Object(exposure), Value::Object(extra)) =
                    (&mut v, flags(&e.exposure), extra)
                {
                    fields.extend(exposure);
                    fields.extend(extra);
                }
                v
            })
            .collect();
        let x = |f: fn(&Exposure) -> bool| self.count(|r| f(&r.endpoint.exposure));
        json!({
            "reportName": inv.report.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            "reportTypeName": Kind::NetworkAccess.as_str(),
            "reportSpec": inv.report.as_ref().map(|r| r.raw_spec.clone()).unwrap_or(Value::Null),
            "startTime": format_time(inv.range.from),
            "endTime": format_time(inv.range.to),
            "generationTime": format_time(generated),
            "endpoints": endpoints,
            "endpointsSummary": {
                "numTotal": self.rows.len(),
                "numServiceAccounts": inv.service_accounts.len(),
                "numIngressProtected": self.count(|r| r.endpoint.ingress_protected),
                "numEgressProtected": self.count(|r| r.endpoint.egress_protected),
                "numIngressFromInternet": x(|e| e.ingress_from_internet),
                "numEgressToInternet": x(|e| e.egress_to_internet),
                "numIngressFromOtherNamespace": x(|e| e.ingress_from_other_namespace),
                "numEgressToOtherNamespace": x(|e| e.egress_to_other_namespace),
                "numEnvoyEnabled": self.count(|r| r.endpoint.envoy_enabled),
            },
            "flows": self.pairs.iter().map(|(s, d)| json!({"source": flow_endpoint(s), "destination": flow_endpoint(d)})).collect::<Vec<_>>(),
            "flowSource": self.flow_source,
            "flowRecords": self.records,
        })
    }

    fn html(&self, generated: Timestamp) -> String {
        let inv = &self.inventory;
        let mut body = String::new();
        let _ = write!(
            body,
            "<h2>Summary</h2>{}<p class=\"note\">Policy flags from the cluster state at {} replayed through {} \
             changes ({} states); protection holds for the whole interval, exposure at any time in it. \
             Observed columns and peers from {} flow records of {}.</p>",
            self.summary().to_html(None),
            escape(&format_time(inv.snapshot_taken)),
            inv.changes.len(),
            inv.states,
            self.records,
            escape(&self.flow_source),
        );
        let unprotected: Vec<&AccessRow> =
            self.rows.iter().filter(|r| !r.endpoint.ingress_protected && r.observed().ingress_from_internet).collect();
        if !unprotected.is_empty() {
            let _ = write!(body, "<h2>Reached from the internet without ingress protection</h2><ul>");
            for r in unprotected {
                let _ = write!(body, "<li><code>{}</code></li>", escape(&r.endpoint.endpoint));
            }
            body.push_str("</ul>");
        }
        let _ = write!(body, "<h2>Endpoints</h2>{}", self.endpoints_table().to_html(Some(500)));
        for w in &inv.warnings {
            let _ = write!(body, "<p class=\"note\">warning: {}</p>", escape(w));
        }
        let _ = write!(body, "<footer>Generated {} by flowaudit.</footer>", escape(&format_time(generated)));
        let name = inv.report.as_ref().map_or("network-access", |r| r.name.as_str());
        html_page(
            &format!("Network access: {name}"),
            &format!("{} to {}", format_time(inv.range.from), format_time(inv.range.to)),
            &body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        TimeRange,
        flows::FlowLogDirs,
        inventory,
        replay::{self, Start},
        tests::{golden, testdata},
    };

    fn report() -> NetworkAccess {
        let range = TimeRange::parse("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z").unwrap();
        let timeline = replay::load(
            &Start::Snapshots(testdata("network-access/snapshots")),
            &[testdata("network-access/audit/audit.log")],
            range,
        )
        .unwrap();
        let inv = inventory::build(&timeline, None).unwrap();
        build(inv, &FlowLogDirs(vec![testdata("network-access/flows")])).unwrap()
    }

    fn csv(table: &Table) -> String {
        String::from_utf8(table.to_csv()).unwrap()
    }

    /// The fixed snapshot, audit log and flow logs (`testdata/network-access`): policies of every
    /// kind exposing to the internet (an ipBlock, a bare rule, a GlobalNetworkSet with a public
    /// CIDR) and to other namespaces, an allow-all policy that existed for one hour of the day,
    /// exact and level-2 records, a `fwd` record and one from before the interval.
    #[test]
    fn golden_network_access() {
        let r = report();
        assert!(r.inventory.warnings.is_empty(), "{:?}", r.inventory.warnings);
        assert_eq!(r.records, 8, "the record from before the interval is not read");
        assert_eq!(
            csv(&r.endpoints_table()),
            "endpoint,ingressProtected,egressProtected,ingressFromInternet,egressToInternet,\
             ingressFromOtherNamespace,egressToOtherNamespace,envoyEnabled,appliedPolicies,trafficAggregationPrefix,\
             endpointsGeneratingTrafficToThisEndpoint,endpointsReceivingTrafficFromThisEndpoint,\
             observedIngressFromInternet,observedEgressToInternet,observedIngressFromOtherNamespace,\
             observedEgressToOtherNamespace,deniedFlows,enforcementViolations\n\
             Pod.v1(legacy/old-1),false,false,true,false,true,false,false,NetworkPolicy.networking.k8s.io/v1(legacy/allow-all),,Public,,false,false,false,false,3,0\n\
             Pod.v1(shop/cart-1),true,true,false,false,true,false,false,NetworkPolicy(shop/cart-from-web),cart-1,Pod.v1(web/front-5d8f-*),,false,false,true,false,0,0\n\
             Pod.v1(shop/db-0),true,false,false,false,false,false,false,NetworkPolicy.networking.k8s.io/v1(shop/db-ingress),,Pod.v1(shop/cart-1);Pod.v1(web/front-5d8f-abc),,false,false,true,false,1,1\n\
             Pod.v1(web/front-5d8f-abc),true,true,true,true,false,true,false,GlobalNetworkPolicy(egress-to-partners);NetworkPolicy.networking.k8s.io/v1(web/front-public),,Public,Public,true,true,false,false,0,0\n\
             Pod.v1(web/front-5d8f-def),true,true,true,true,false,true,false,GlobalNetworkPolicy(egress-to-partners);NetworkPolicy.networking.k8s.io/v1(web/front-public),front-5d8f-*,,Pod.v1(shop/cart-1),false,false,false,true,0,0\n"
        );
        assert_eq!(
            csv(&r.summary()),
            "startTime,endTime,endpointSelector,namespaceNames,namespaceSelector,serviceAccountNames,\
             serviceAccountSelectors,endpointsNumIngressProtected,endpointsNumEgressProtected,\
             endpointsNumIngressUnprotected,endpointsNumEgressUnprotected,endpointsNumIngressFromInternet,\
             endpointsNumEgressToInternet,endpointsNumIngressFromOtherNamespace,endpointsNumEgressToOtherNamespace,\
             endpointsNumEnvoyEnabled,endpointsNumObservedIngressFromInternet,endpointsNumObservedEgressToInternet,\
             endpointsNumObservedIngressFromOtherNamespace,endpointsNumObservedEgressToOtherNamespace,deniedFlows,\
             enforcementViolations\n\
             2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,,,,,,4,3,1,2,3,2,2,2,0,1,1,2,1,4,1\n"
        );
        golden("network-access", r.download_files());
    }

    #[test]
    fn report_data_has_calicos_shape_and_the_flow_pairs() {
        let r = report();
        let data = r.report_data(Timestamp::from_second(1_795_300_000).unwrap());
        assert_eq!(data["reportTypeName"], "network-access");
        assert_eq!(data["endpointsSummary"]["numTotal"], 5);
        assert_eq!(data["endpointsSummary"]["numIngressFromInternet"], 3);
        let def = &data["endpoints"][4];
        assert_eq!(def["endpoint"], "Pod.v1(web/front-5d8f-def)");
        assert_eq!(def["flowLogAggregationName"], "front-5d8f-*");
        assert_eq!(def["egressToInternet"], true);
        assert_eq!(def["observed"]["egressToOtherNamespace"], true);
        assert!(data["flows"].as_array().unwrap().contains(&json!({
            "source": {"kind": "Pod", "name": "front-5d8f-", "nameIsAggregationPrefix": true, "namespace": "web"},
            "destination": {"kind": "Pod", "name": "cart-1", "nameIsAggregationPrefix": false, "namespace": "shop"},
        })));
        assert_eq!(data["flows"].as_array().unwrap().len(), 6);
        let html = r.html(Timestamp::from_second(1_795_300_000).unwrap());
        assert!(!html.contains("Reached from the internet without ingress protection"), "front-5d8f-abc is protected");
        assert!(html.contains("<td>Pod.v1(web/front-5d8f-def)</td>"), "{html}");
    }

    #[test]
    fn peers_render_as_calico_names_them() {
        let end = |kind: &str, name: &str, aggr: &str, ns: &str| RowEnd {
            kind: kind.into(),
            name: name.into(),
            name_aggr: aggr.into(),
            namespace: ns.into(),
        };
        let cases = [
            (end("wep", "db-0", "db-0", "shop"), "Pod.v1(shop/db-0)"),
            (end("wep", "-", "web-7d*", "shop"), "Pod.v1(shop/web-7d*)"),
            (end("hep", "node-a-eth0", "node-a", "-"), "HostEndpoint(node-a-eth0)"),
            (end("ns", "partners", "partners", "-"), "GlobalNetworkSet(partners)"),
            (end("ns", "-", "office", "shop"), "NetworkSet(shop/office)"),
            (end("net", "-", "pub", "-"), "Public"),
            (end("net", "-", "pvt", "-"), "Private"),
        ];
        for (e, want) in cases {
            assert_eq!(render_peer(&e), want);
        }
    }

    /// `flowaudit report network-access` through [`crate::report::run`], and what it refuses.
    #[test]
    fn run_writes_the_report_and_needs_flows() {
        use crate::report::{Request, run};
        let out = tempfile::tempdir().unwrap();
        let mut req = Request {
            kind: Some(Kind::NetworkAccess),
            from: "2026-11-20T00:00:00Z".into(),
            to: "2026-11-21T00:00:00Z".into(),
            out: out.path().to_owned(),
            format: "csv,json,html".into(),
            audit_logs: vec![testdata("network-access/audit/audit.log")],
            snapshot_dir: Some(testdata("network-access/snapshots")),
            flow_log_dirs: vec![testdata("network-access/flows")],
            ..Default::default()
        };
        let written = run(&req).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["summary.csv", "endpoints.csv", "report.json", "report.html"]);
        assert_eq!(std::fs::read(out.path().join("endpoints.csv")).unwrap(), report().endpoints_table().to_csv());
        req.flow_log_dirs.clear();
        let e = run(&req).unwrap_err();
        assert_eq!(
            (e.exit_code(), e.to_string().starts_with("--flow-log-dir: the network-access report needs")),
            (2, true)
        );
        req.kind = Some(Kind::Inventory);
        req.flow_log_dirs = vec![testdata("network-access/flows")];
        let e = run(&req).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--flow-log-dir: flows are read by the network-access and cis-benchmark reports, not inventory"
        );
    }
}
