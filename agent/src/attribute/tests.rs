//! Table-driven policy cases: manifests, a flow, the expected verdict and traces.

use super::*;
use crate::{
    cluster::manifests::load_dir,
    enrich::{IdentityLookup, Index},
};
use flowaudit_common::proto::{TCP, UDP};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {kubernetes.io/metadata.name: ops, env: prod, team: ops}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {kubernetes.io/metadata.name: dev, env: dev}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: sql, containerPort: 5432}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: monitor, namespace: ops, labels: {app: monitor}}
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
status: {podIP: 10.0.3.1}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: shop, labels: {app: db}}
spec: {hostNetwork: true}
status: {podIP: 192.168.0.10}
"#;

/// A case: policies (YAML), flow `from → to` (a pod `ns/name` or an address), protocol, port;
/// expected flow action, egress trace (`None`: no egress side), ingress trace.
struct Case {
    name: &'static str,
    policies: &'static str,
    from: &'static str,
    to: &'static str,
    proto: u8,
    port: Option<u16>,
    action: Action,
    egress: Option<&'static [&'static str]>,
    ingress: Option<&'static [&'static str]>,
}

fn endpoint_of(state: &crate::cluster::ClusterState, index: &Index, who: &str) -> (Option<std::sync::Arc<Endpoint>>, IpAddr) {
    match who.parse::<IpAddr>() {
        Ok(ip) => (index.by_ip(ip), ip),
        Err(_) => {
            let (ns, name) = who.split_once('/').expect("ns/name");
            let pod = state.pods.iter().find(|p| p.namespace == ns && p.name == name).expect("pod");
            let ip = pod.ips[0];
            let ep = if pod.host_network {
                // Named through its cgroup in real life; build the endpoint as enrich would.
                let mut e = (*index.by_ip(state.pods.iter().find(|p| !p.host_network && p.namespace == ns).unwrap().ips[0]).unwrap()).clone();
                e.name = Some(pod.name.clone());
                e.labels = pod.labels.clone();
                e.host_network = true;
                Some(std::sync::Arc::new(e))
            } else {
                index.by_ip(ip)
            };
            (ep, ip)
        }
    }
}

fn run(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("policies.yaml"), case.policies).unwrap();
    let state = load_dir(dir.path()).unwrap_or_else(|e| panic!("{}: {e:?}", case.name)).state;
    let index = Index::build(&state, std::path::Path::new("/nonexistent"));
    let set = PolicySet::compile(&state);
    let (src, src_ip) = endpoint_of(&state, &index, case.from);
    let (dst, dst_ip) = endpoint_of(&state, &index, case.to);
    let v = set.evaluate(src.as_deref(), src_ip, dst.as_deref(), dst_ip, case.proto, case.port);
    let trace = |s: &Option<SideVerdict>| s.as_ref().map(|s| s.enforced.trace.clone());
    let want = |t: Option<&[&str]>| t.map(|t| t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(trace(&v.egress), want(case.egress), "{}: egress trace", case.name);
    assert_eq!(trace(&v.ingress), want(case.ingress), "{}: ingress trace", case.name);
    assert_eq!(v.action(), case.action, "{}: action", case.name);
    // No staged policy in these cases: pending is enforced.
    assert_eq!(v.pending_action(), v.action(), "{}: pending", case.name);
}

const DENY_ALL_SHOP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

const WEB_TO_DB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
  - from: [{namespaceSelector: {matchLabels: {team: ops}}, podSelector: {matchLabels: {app: monitor}}}]
    ports: [{port: sql}]
  - from: [{ipBlock: {cidr: 172.16.5.9/16, except: [172.16.9.0/24]}}]
    ports: [{port: dns, protocol: UDP}, {port: 9000, endPort: 9100}]
"#;

const EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}}]
  - to: [{ipBlock: {cidr: 8.8.8.8/32}}]
    ports: [{protocol: UDP, port: 53}]
"#;

const OPEN_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open, namespace: shop}
spec: {podSelector: {matchLabels: {app: db}}, ingress: [{}]}
"#;

#[test]
fn kubernetes_network_policy_cases() {
    const ALLOW: Action = Action::Allow;
    const DENY: Action = Action::Deny;
    let cases = [
        Case { name: "no policy: allowed, empty traces", policies: "", from: "shop/web", to: "shop/db", proto: TCP, port: Some(5432), action: ALLOW, egress: Some(&[]), ingress: Some(&[]) },
        Case { name: "default deny ingress", policies: DENY_ALL_SHOP, from: "shop/web", to: "shop/db", proto: TCP, port: Some(5432), action: DENY, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/default-deny|deny|-1"]) },
        Case { name: "default deny: egress is not isolated", policies: DENY_ALL_SHOP, from: "shop/db", to: "ops/monitor", proto: TCP, port: Some(80), action: ALLOW, egress: Some(&[]), ingress: Some(&[]) },
        Case { name: "allowed by podSelector and port", policies: WEB_TO_DB, from: "shop/web", to: "shop/db", proto: TCP, port: Some(5432), action: ALLOW, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/allow-web|allow|0"]) },
        Case { name: "wrong port: end of tier names the first selecting policy", policies: WEB_TO_DB, from: "shop/web", to: "shop/db", proto: TCP, port: Some(5433), action: DENY, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]) },
        Case { name: "wrong protocol", policies: WEB_TO_DB, from: "shop/web", to: "shop/db", proto: UDP, port: Some(5432), action: DENY, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]) },
        Case { name: "podSelector alone means the policy's namespace", policies: WEB_TO_DB, from: "dev/web", to: "shop/db", proto: TCP, port: Some(5432), action: DENY, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]) },
        Case { name: "namespaceSelector AND podSelector, named port", policies: WEB_TO_DB, from: "ops/monitor", to: "shop/db", proto: TCP, port: Some(5432), action: ALLOW, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/allow-web|allow|1"]) },
        Case { name: "ipBlock with host bits, named UDP port", policies: WEB_TO_DB, from: "172.16.200.1", to: "shop/db", proto: UDP, port: Some(53), action: ALLOW, egress: None, ingress: Some(&["0|default|knp:shop/allow-web|allow|2"]) },
        Case { name: "ipBlock except", policies: WEB_TO_DB, from: "172.16.9.1", to: "shop/db", proto: UDP, port: Some(53), action: DENY, egress: None, ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]) },
        Case { name: "endPort range", policies: WEB_TO_DB, from: "172.16.1.1", to: "shop/db", proto: TCP, port: Some(9100), action: ALLOW, egress: None, ingress: Some(&["0|default|knp:shop/allow-web|allow|2"]) },
        Case { name: "past endPort", policies: WEB_TO_DB, from: "172.16.1.1", to: "shop/db", proto: TCP, port: Some(9101), action: DENY, egress: None, ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]) },
        Case { name: "default deny selects the web pod too", policies: WEB_TO_DB, from: "shop/db", to: "shop/web", proto: TCP, port: Some(80), action: DENY, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/default-deny|deny|-1"]) },
        Case { name: "egress rules imply Egress isolation: namespace expression", policies: EGRESS, from: "shop/web", to: "ops/monitor", proto: TCP, port: Some(80), action: ALLOW, egress: Some(&["0|default|knp:shop/web-egress|allow|0"]), ingress: Some(&[]) },
        Case { name: "egress denied to another env", policies: EGRESS, from: "shop/web", to: "dev/web", proto: TCP, port: Some(80), action: DENY, egress: Some(&["0|default|knp:shop/web-egress|deny|-1"]), ingress: Some(&[]) },
        Case { name: "egress to an ipBlock and port", policies: EGRESS, from: "shop/web", to: "8.8.8.8", proto: UDP, port: Some(53), action: ALLOW, egress: Some(&["0|default|knp:shop/web-egress|allow|1"]), ingress: None },
        Case { name: "egress to an ipBlock, other port", policies: EGRESS, from: "shop/web", to: "8.8.8.8", proto: UDP, port: Some(54), action: DENY, egress: Some(&["0|default|knp:shop/web-egress|deny|-1"]), ingress: None },
        Case { name: "an empty rule admits everyone", policies: OPEN_INGRESS, from: "203.0.113.7", to: "shop/db", proto: TCP, port: Some(1), action: ALLOW, egress: None, ingress: Some(&["0|default|knp:shop/open|allow|0"]) },
        Case { name: "host-network pods are not subjects", policies: DENY_ALL_SHOP, from: "shop/web", to: "shop/hostnet", proto: TCP, port: Some(5432), action: ALLOW, egress: Some(&[]), ingress: Some(&[]) },
        Case { name: "host-network pods are not pod peers", policies: WEB_TO_DB, from: "shop/hostnet", to: "shop/db", proto: TCP, port: Some(5432), action: DENY, egress: Some(&[]), ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]) },
    ];
    for case in &cases {
        run(case);
    }
}

#[test]
fn enforcement_compares_packets_with_the_verdict() {
    use Enforcement::*;
    let since = 1_000;
    assert_eq!(enforcement(Action::Deny, Observed::Established, 1, 2_000, since), Violation);
    assert_eq!(enforcement(Action::Deny, Observed::Established, 0, 500, since), StaleConnection);
    assert_eq!(enforcement(Action::Deny, Observed::Established, 0, 2_000, since), Violation);
    assert_eq!(enforcement(Action::Deny, Observed::Attempted, 1, 2_000, since), Consistent);
    assert_eq!(enforcement(Action::Allow, Observed::Attempted, 1, 2_000, since), UnexplainedDrop);
    assert_eq!(enforcement(Action::Allow, Observed::Established, 1, 2_000, since), Consistent);
    assert_eq!(enforcement(Action::Allow, Observed::OneWay, 1, 2_000, since), Consistent);
}

#[test]
fn records_get_the_reporter_side_and_the_flow_verdict() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("p.yaml"), DENY_ALL_SHOP).unwrap();
    let state = load_dir(dir.path()).unwrap().state;
    let index = Index::build(&state, std::path::Path::new("/nonexistent"));
    let mut attributor = Attributor::new();
    attributor.update(&state, 0);
    let mut src = FlowRecord::sample("10.0.1.1", 40000, "10.0.1.2", 5432);
    src.context.source = index.by_ip("10.0.1.1".parse().unwrap());
    src.context.dest = index.by_ip("10.0.1.2".parse().unwrap());
    src.context.first_seen_ns = 10;
    let mut dst = src.clone();
    dst.reporter = Reporter::Dst;
    let mut fwd = src.clone();
    fwd.reporter = Reporter::Fwd;
    let mut records = vec![src, dst, fwd];
    attributor.attribute(&mut records);
    let deny = vec!["0|default|knp:shop/default-deny|deny|-1".to_string()];
    // src: the source's egress allows; the flow is denied at the destination.
    assert_eq!((records[0].action, records[0].flow_action), (Action::Allow, Action::Deny));
    assert!(records[0].policies.enforced_policies.is_empty());
    assert_eq!((records[1].action, &records[1].policies.enforced_policies), (Action::Deny, &deny));
    assert_eq!((records[2].action, &records[2].policies.enforced_policies), (Action::Deny, &deny));
    // The sample is established: a denied flow that got through is a violation.
    assert_eq!(records[1].enforcement, Enforcement::Violation);
    assert_eq!(records[1].num_violations, 1);
    assert_eq!(records[1].pending_action, Action::Deny);
}
