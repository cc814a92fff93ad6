//! Table-driven policy cases: manifests, a flow, the expected verdict and traces.

use std::net::IpAddr;

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

fn endpoint_of(
    state: &crate::cluster::ClusterState,
    index: &Index,
    who: &str,
) -> (Option<std::sync::Arc<Endpoint>>, IpAddr) {
    match who.parse::<IpAddr>() {
        Ok(ip) => (index.by_ip(ip), ip),
        Err(_) => {
            let (ns, name) = who.split_once('/').expect("ns/name");
            let pod = state.pods.iter().find(|p| p.namespace == ns && p.name == name).expect("pod");
            let ip = pod.ips[0];
            let ep = if pod.host_network {
                // Named through its cgroup in real life; build the endpoint as enrich would.
                let mut e = (*index
                    .by_ip(state.pods.iter().find(|p| !p.host_network && p.namespace == ns).unwrap().ips[0])
                    .unwrap())
                .clone();
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
    let v = set.evaluate(&FlowView {
        src: src.as_deref(),
        src_ip,
        dst: dst.as_deref(),
        dst_ip,
        proto: case.proto,
        src_port: Some(40000),
        dst_port: case.port,
        icmp: None,
    });
    let trace = |s: &Option<SideVerdict>| s.as_ref().map(|s| s.enforced.trace.to_vec());
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

const STACKED: &str = r#"
# Two policies select db with overlapping podSelectors: their rules add up (upstream e2e:
# "should enforce multiple, stacked policies with overlapping podSelectors").
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-web, namespace: shop}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [db, cache]}]}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-ops, namespace: shop}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}], ports: [{protocol: SCTP, port: 9999}]}]
---
# Egress only: ingress stays open ("ingress and egress can be controlled independently").
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-no-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: []
---
# A podSelector with DoesNotExist.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: unlabelled-only, namespace: dev}
spec:
  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  policyTypes: [Ingress]
"#;

#[test]
fn kubernetes_network_policy_cases() {
    const ALLOW: Action = Action::Allow;
    const DENY: Action = Action::Deny;
    let cases = [
        Case {
            name: "no policy: allowed, empty traces",
            policies: "",
            from: "shop/web",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&[]),
        },
        Case {
            name: "default deny ingress",
            policies: DENY_ALL_SHOP,
            from: "shop/web",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/default-deny|deny|-1"]),
        },
        Case {
            name: "default deny: egress is not isolated",
            policies: DENY_ALL_SHOP,
            from: "shop/db",
            to: "ops/monitor",
            proto: TCP,
            port: Some(80),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&[]),
        },
        Case {
            name: "allowed by podSelector and port",
            policies: WEB_TO_DB,
            from: "shop/web",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/allow-web|allow|0"]),
        },
        Case {
            name: "wrong port: end of tier names the first selecting policy",
            policies: WEB_TO_DB,
            from: "shop/web",
            to: "shop/db",
            proto: TCP,
            port: Some(5433),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]),
        },
        Case {
            name: "wrong protocol",
            policies: WEB_TO_DB,
            from: "shop/web",
            to: "shop/db",
            proto: UDP,
            port: Some(5432),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]),
        },
        Case {
            name: "podSelector alone means the policy's namespace",
            policies: WEB_TO_DB,
            from: "dev/web",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]),
        },
        Case {
            name: "namespaceSelector AND podSelector, named port",
            policies: WEB_TO_DB,
            from: "ops/monitor",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/allow-web|allow|1"]),
        },
        Case {
            name: "ipBlock with host bits, named UDP port",
            policies: WEB_TO_DB,
            from: "172.16.200.1",
            to: "shop/db",
            proto: UDP,
            port: Some(53),
            action: ALLOW,
            egress: None,
            ingress: Some(&["0|default|knp:shop/allow-web|allow|2"]),
        },
        Case {
            name: "ipBlock except",
            policies: WEB_TO_DB,
            from: "172.16.9.1",
            to: "shop/db",
            proto: UDP,
            port: Some(53),
            action: DENY,
            egress: None,
            ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]),
        },
        Case {
            name: "endPort range",
            policies: WEB_TO_DB,
            from: "172.16.1.1",
            to: "shop/db",
            proto: TCP,
            port: Some(9100),
            action: ALLOW,
            egress: None,
            ingress: Some(&["0|default|knp:shop/allow-web|allow|2"]),
        },
        Case {
            name: "past endPort",
            policies: WEB_TO_DB,
            from: "172.16.1.1",
            to: "shop/db",
            proto: TCP,
            port: Some(9101),
            action: DENY,
            egress: None,
            ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]),
        },
        Case {
            name: "default deny selects the web pod too",
            policies: WEB_TO_DB,
            from: "shop/db",
            to: "shop/web",
            proto: TCP,
            port: Some(80),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/default-deny|deny|-1"]),
        },
        Case {
            name: "egress rules imply Egress isolation: namespace expression",
            policies: EGRESS,
            from: "shop/web",
            to: "ops/monitor",
            proto: TCP,
            port: Some(80),
            action: ALLOW,
            egress: Some(&["0|default|knp:shop/web-egress|allow|0"]),
            ingress: Some(&[]),
        },
        Case {
            name: "egress denied to another env",
            policies: EGRESS,
            from: "shop/web",
            to: "dev/web",
            proto: TCP,
            port: Some(80),
            action: DENY,
            egress: Some(&["0|default|knp:shop/web-egress|deny|-1"]),
            ingress: Some(&[]),
        },
        Case {
            name: "egress to an ipBlock and port",
            policies: EGRESS,
            from: "shop/web",
            to: "8.8.8.8",
            proto: UDP,
            port: Some(53),
            action: ALLOW,
            egress: Some(&["0|default|knp:shop/web-egress|allow|1"]),
            ingress: None,
        },
        Case {
            name: "egress to an ipBlock, other port",
            policies: EGRESS,
            from: "shop/web",
            to: "8.8.8.8",
            proto: UDP,
            port: Some(54),
            action: DENY,
            egress: Some(&["0|default|knp:shop/web-egress|deny|-1"]),
            ingress: None,
        },
        Case {
            name: "an empty rule admits everyone",
            policies: OPEN_INGRESS,
            from: "203.0.113.7",
            to: "shop/db",
            proto: TCP,
            port: Some(1),
            action: ALLOW,
            egress: None,
            ingress: Some(&["0|default|knp:shop/open|allow|0"]),
        },
        Case {
            name: "host-network pods are not subjects",
            policies: DENY_ALL_SHOP,
            from: "shop/web",
            to: "shop/hostnet",
            proto: TCP,
            port: Some(5432),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&[]),
        },
        Case {
            name: "stacked: first policy's rule",
            policies: STACKED,
            from: "shop/web",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: DENY,
            egress: Some(&["0|default|knp:shop/web-no-egress|deny|-1"]),
            ingress: Some(&["0|default|knp:shop/a-from-web|allow|0"]),
        },
        Case {
            name: "stacked: second policy's rule on SCTP",
            policies: STACKED,
            from: "ops/monitor",
            to: "shop/db",
            proto: flowaudit_common::proto::SCTP,
            port: Some(9999),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/b-from-ops|allow|0"]),
        },
        Case {
            name: "stacked: no rule of either",
            policies: STACKED,
            from: "ops/monitor",
            to: "shop/db",
            proto: TCP,
            port: Some(9999),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/a-from-web|deny|-1"]),
        },
        Case {
            name: "egress-only isolation leaves ingress open",
            policies: STACKED,
            from: "ops/monitor",
            to: "shop/web",
            proto: TCP,
            port: Some(80),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&[]),
        },
        Case {
            name: "an empty egress list denies all egress",
            policies: STACKED,
            from: "shop/web",
            to: "ops/monitor",
            proto: TCP,
            port: Some(80),
            action: DENY,
            egress: Some(&["0|default|knp:shop/web-no-egress|deny|-1"]),
            ingress: Some(&[]),
        },
        Case {
            name: "DoesNotExist: labelled pods are not selected",
            policies: STACKED,
            from: "shop/db",
            to: "dev/web",
            proto: TCP,
            port: Some(80),
            action: ALLOW,
            egress: Some(&[]),
            ingress: Some(&[]),
        },
        Case {
            name: "host-network pods are not pod peers",
            policies: WEB_TO_DB,
            from: "shop/hostnet",
            to: "shop/db",
            proto: TCP,
            port: Some(5432),
            action: DENY,
            egress: Some(&[]),
            ingress: Some(&["0|default|knp:shop/allow-web|deny|-1"]),
        },
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
    let deny = ["0|default|knp:shop/default-deny|deny|-1".to_string()];
    // src: the source's egress allows; the flow is denied at the destination.
    assert_eq!((records[0].action, records[0].flow_action), (Action::Allow, Action::Deny));
    assert!(records[0].policies.enforced_policies.is_empty());
    assert_eq!((records[1].action, &records[1].policies.enforced_policies[..]), (Action::Deny, &deny[..]));
    assert_eq!((records[2].action, &records[2].policies.enforced_policies[..]), (Action::Deny, &deny[..]));
    // The sample is established: a denied flow that got through is a violation.
    assert_eq!(records[1].enforcement, Enforcement::Violation);
    assert_eq!(records[1].num_violations, 1);
    assert_eq!(records[1].pending_action, Action::Deny);
}

/// Verdict of a flow against BASE + `policies`: (action, egress trace, ingress trace,
/// pending action, pending ingress trace).
#[allow(clippy::type_complexity)]
fn verdict(
    policies: &str,
    from: &str,
    to: &str,
    proto: u8,
    port: u16,
) -> (Action, Option<Vec<String>>, Option<Vec<String>>, Action, Option<Vec<String>>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("policies.yaml"), policies).unwrap();
    let state = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:?}")).state;
    let index = Index::build(&state, std::path::Path::new("/nonexistent"));
    let (src, src_ip) = endpoint_of(&state, &index, from);
    let (dst, dst_ip) = endpoint_of(&state, &index, to);
    let v = PolicySet::compile(&state).evaluate(&FlowView {
        src: src.as_deref(),
        src_ip,
        dst: dst.as_deref(),
        dst_ip,
        proto,
        src_port: Some(40000),
        dst_port: Some(port),
        icmp: None,
    });
    let e = v.egress.as_ref().map(|s| s.enforced.trace.to_vec());
    let i = v.ingress.as_ref().map(|s| s.enforced.trace.to_vec());
    let pi = v.ingress.as_ref().map(|s| s.pending.trace.to_vec());
    (v.action(), e, i, v.pending_action(), pi)
}

fn t(entries: &[&str]) -> Option<Vec<String>> {
    Some(entries.iter().map(|s| s.to_string()).collect())
}

const TIERED: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.db-guard}
spec:
  tier: security
  order: 10
  selector: app == 'db'
  ingress:
  - action: Log
  - action: Deny
    source: {namespaceSelector: "projectcalico.org/name == 'dev'"}
  - action: Pass
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

#[test]
fn calico_tiers_pass_log_and_namespace_selectors() {
    let (a, _, i, ..) = verdict(TIERED, "dev/web", "shop/db", TCP, 5432);
    assert_eq!(
        (a, i),
        (Action::Deny, t(&["0|security|gnp:security.db-guard|deny|1"])),
        "Log leaves no entry; rule 1 denies dev"
    );
    let (a, _, i, ..) = verdict(TIERED, "shop/web", "shop/db", TCP, 5432);
    assert_eq!(
        (a, i),
        (Action::Allow, t(&["0|security|gnp:security.db-guard|pass|2", "1|default|knp:shop/allow-web|allow|0"])),
        "Pass hands over to the next tier"
    );
    let (a, _, i, ..) = verdict(TIERED, "ops/monitor", "shop/db", TCP, 5432);
    assert_eq!(
        (a, i),
        (Action::Deny, t(&["0|security|gnp:security.db-guard|pass|2", "1|default|knp:shop/allow-web|deny|-1"]))
    );
    // monitor is not selected by anything: both sides allow with empty traces.
    let (a, e, i, ..) = verdict(TIERED, "shop/db", "ops/monitor", TCP, 80);
    assert_eq!((a, e, i), (Action::Allow, t(&[]), t(&[])));
}

#[test]
fn calico_tier_default_action_and_unordered_tiers() {
    let policies = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: audit}
spec: {order: 50, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: zz-unordered}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: audit.watch-db}
spec:
  tier: audit
  selector: app == 'db'
  ingress: [{action: Deny, protocol: UDP}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: zz-unordered.last-word}
spec:
  tier: zz-unordered
  selector: app == 'db'
  ingress: [{action: Deny}]
"#;
    // audit selects db, nothing matches TCP: its default Pass; the unordered tier comes after
    // every ordered one, including default (which selects nothing here).
    let (a, _, i, ..) = verdict(policies, "shop/web", "shop/db", TCP, 5432);
    assert_eq!(
        (a, i),
        (Action::Deny, t(&["0|audit|gnp:audit.watch-db|pass|-1", "1|zz-unordered|gnp:zz-unordered.last-word|deny|0"]))
    );
}

#[test]
fn calico_rule_fields() {
    let policies = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-in, namespace: shop}
spec:
  selector: app == 'db'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {nets: [172.16.0.0/16], notNets: [172.16.9.0/24]}
    destination: {ports: ["9000:9100", sql]}
  - action: Allow
    protocol: TCP
    source: {serviceAccounts: {names: [web-sa]}}
  - action: Allow
    protocol: UDP
    notProtocol: TCP
    source: {selector: "feed == 'partner'"}
"#;
    type Row = (&'static str, u8, u16, Action, Option<Vec<String>>);
    let cases: [Row; 6] = [
        ("172.16.1.1", TCP, 9050, Action::Allow, t(&["0|default|np:shop/db-in|allow|0"])),
        ("172.16.1.1", TCP, 5432, Action::Allow, t(&["0|default|np:shop/db-in|allow|0"])),
        ("172.16.9.1", TCP, 9050, Action::Deny, t(&["0|default|np:shop/db-in|deny|-1"])),
        ("172.16.1.1", TCP, 22, Action::Deny, t(&["0|default|np:shop/db-in|deny|-1"])),
        ("198.51.100.7", UDP, 53, Action::Allow, t(&["0|default|np:shop/db-in|allow|2"])),
        ("198.51.100.99", UDP, 53, Action::Deny, t(&["0|default|np:shop/db-in|deny|-1"])),
    ];
    let sets = r#"
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: shop, labels: {feed: partner}}
spec: {nets: [198.51.100.0/28]}
"#;
    let all = format!("{policies}{sets}");
    for (from, proto, port, action, trace) in cases {
        let (a, _, i, ..) = verdict(Box::leak(all.clone().into_boxed_str()), from, "shop/db", proto, port);
        assert_eq!((a, i), (action, trace), "{from} {proto}/{port}");
    }
    // The service-account rule: web's pod runs as web-sa.
    let with_sa = all.clone();
    let base_sa = BASE.replace(
        "metadata: {name: web, namespace: shop, labels: {app: web}}",
        "metadata: {name: web, namespace: shop, labels: {app: web}}\nspec: {serviceAccountName: web-sa}",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), base_sa).unwrap();
    std::fs::write(dir.path().join("p.yaml"), with_sa).unwrap();
    let state = load_dir(dir.path()).unwrap().state;
    let index = Index::build(&state, std::path::Path::new("/nonexistent"));
    let (src, src_ip) = endpoint_of(&state, &index, "shop/web");
    let (dst, dst_ip) = endpoint_of(&state, &index, "shop/db");
    let v = PolicySet::compile(&state).evaluate(&FlowView {
        src: src.as_deref(),
        src_ip,
        dst: dst.as_deref(),
        dst_ip,
        proto: TCP,
        src_port: Some(1),
        dst_port: Some(22),
        icmp: None,
    });
    assert_eq!(v.ingress.unwrap().enforced.trace.to_vec(), vec!["0|default|np:shop/db-in|allow|1".to_string()]);
}

/// A global network set and a policy naming it.
const THREATS: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: threats, labels: {feed: threat}}
spec: {nets: [203.0.113.0/24]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block-threats}
spec:
  selector: all()
  types: [Egress]
  egress:
  - action: Deny
    destination: {selector: "feed == 'threat'", namespaceSelector: global()}
  - action: Allow
"#;

#[test]
fn a_global_network_set_named_by_a_rule_selector() {
    let policies = THREATS;
    let (a, e, ..) = verdict(policies, "shop/web", "203.0.113.9", TCP, 443);
    assert_eq!((a, e), (Action::Deny, t(&["0|default|gnp:block-threats|deny|0"])));
    let (a, e, ..) = verdict(policies, "shop/web", "198.51.100.1", TCP, 443);
    assert_eq!((a, e), (Action::Allow, t(&["0|default|gnp:block-threats|allow|1"])));
}

/// An enforced and a staged Kubernetes policy of one name, and a staged global policy.
const STAGED: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 6000}]}]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: quarantine-monitor}
spec:
  selector: app == 'monitor'
  types: [Egress]
  egress: [{action: Deny}]
"#;

#[test]
fn staged_policies_change_only_the_pending_verdict() {
    let policies = STAGED;
    let (a, _, i, pa, pi) = verdict(policies, "shop/web", "shop/db", TCP, 5432);
    assert_eq!((a, i), (Action::Allow, t(&["0|default|knp:shop/allow-web|allow|0"])));
    assert_eq!((pa, pi), (Action::Deny, t(&["0|default|sknp:shop/allow-web|deny|-1"])));
    // A staged policy with no enforced counterpart is added to the pending set only.
    let (a, e, _, pa, _) = verdict(policies, "ops/monitor", "shop/web", TCP, 80);
    assert_eq!((a, e, pa), (Action::Allow, t(&[]), Action::Deny));
    // Delete removes the enforced policy from the pending set.
    let deleting = format!("{policies}---\napiVersion: projectcalico.org/v3\nkind: StagedKubernetesNetworkPolicy\nmetadata: {{name: allow-web, namespace: shop}}\nspec: {{stagedAction: Delete, podSelector: {{}}}}\n").replacen(
        "kind: StagedKubernetesNetworkPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 6000}]}]\n---\n",
        "kind: Namespace\nmetadata: {name: spare}\n---\n",
        1,
    );
    let (a, _, _, pa, pi) = verdict(Box::leak(deleting.into_boxed_str()), "shop/web", "shop/db", TCP, 5432);
    assert_eq!((a, pa, pi), (Action::Allow, Action::Allow, t(&[])));
}

const ADMIN: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: no-dev-into-prod}
spec:
  priority: 10
  subject: {namespaces: {matchLabels: {env: prod}}}
  ingress:
  - {name: dev, action: Deny, from: [{namespaces: {matchLabels: {env: dev}}}]}
  - {name: ops, action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {team: ops}}, podSelector: {}}}], ports: [{portNumber: {port: 5432}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: hand-over}
spec:
  priority: 20
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: monitor}}}}
  ingress:
  - {action: Pass, from: [{namespaces: {}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}]}
"#;

#[test]
fn admin_and_baseline_admin_policies() {
    let (a, _, i, ..) = verdict(ADMIN, "dev/web", "shop/db", TCP, 5432);
    assert_eq!((a, i), (Action::Deny, t(&["0|kube-admin|kanp:no-dev-into-prod|deny|0"])));
    let (a, _, i, ..) = verdict(ADMIN, "ops/monitor", "shop/db", TCP, 5432);
    assert_eq!((a, i), (Action::Allow, t(&["0|kube-admin|kanp:no-dev-into-prod|allow|1"])));
    // Nothing in kube-admin matches: its default is Pass; the baseline denies.
    let (a, _, i, ..) = verdict(ADMIN, "shop/web", "shop/db", TCP, 5432);
    assert_eq!(
        (a, i),
        (Action::Deny, t(&["0|kube-admin|kanp:no-dev-into-prod|pass|-1", "1|kube-baseline|kbanp:default|deny|0"]))
    );
    // A Kubernetes NetworkPolicy in tier default decides before the baseline.
    let with_np = format!(
        "{ADMIN}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-web, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]}}]\n"
    );
    let (a, _, i, ..) = verdict(Box::leak(with_np.into_boxed_str()), "shop/web", "shop/db", TCP, 5432);
    assert_eq!(
        (a, i),
        (Action::Allow, t(&["0|kube-admin|kanp:no-dev-into-prod|pass|-1", "1|default|knp:shop/allow-web|allow|0"]))
    );
    // An explicit Pass rule ends the tier (no end-of-tier entry), then the baseline.
    let (a, _, i, ..) = verdict(ADMIN, "shop/web", "ops/monitor", TCP, 80);
    assert_eq!(
        (a, i),
        (Action::Deny, t(&["0|kube-admin|kanp:hand-over|pass|0", "1|kube-baseline|kbanp:default|deny|0"]))
    );
}

#[test]
fn ip_block_cidrs_are_parsed_once_with_the_same_meaning() {
    use super::kube::{Cidr, in_cidr};
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // (cidr, address, inside)
    let cases = [
        ("10.0.0.0/8", "10.200.1.2", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("172.16.5.9/16", "172.16.200.1", true),
        ("172.16.5.9/16", "172.17.0.1", false),
        ("192.168.1.1", "192.168.1.1", true),
        ("192.168.1.1", "192.168.1.2", false),
        ("192.168.1.1/abc", "192.168.1.1", true),
        ("192.168.1.1/abc", "192.168.1.2", false),
        ("192.168.1.1/40", "192.168.1.1", true),
        ("192.168.1.1/40", "192.168.1.3", false),
        ("0.0.0.0/0", "8.8.8.8", true),
        ("0.0.0.0/0", "fd00::1", false),
        ("fd00:fa::/32", "fd00:fa:1::2", true),
        ("fd00:fa::/32", "fd00:fb::2", false),
        ("fd00::1/200", "fd00::1", true),
        ("::/0", "10.0.0.1", false),
        ("not-an-address/8", "10.0.0.1", false),
    ];
    for (cidr, addr, inside) in cases {
        assert_eq!(Cidr::parse(cidr).contains(ip(addr)), inside, "{cidr} holds {addr}");
        assert_eq!(in_cidr(ip(addr), cidr), inside, "in_cidr({addr}, {cidr})");
    }
    assert_eq!(Cidr::parse("not-an-address/8"), Cidr::Invalid);
}

/// The attribute stage keeps selections per endpoint and traces per walk across flows and
/// passes (and verdicts per flow); what it writes must be what a fresh walk of each flow gives.
#[test]
fn the_stage_memo_and_cache_give_the_verdicts_of_a_fresh_walk() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.yaml"), BASE).unwrap();
    // TIERED's Kubernetes policy is STAGED's first.
    let tiered = TIERED.split("---\napiVersion: networking.k8s.io/v1").next().unwrap();
    let web_to_db = WEB_TO_DB.replace("name: allow-web", "name: allow-web-k");
    let policies = [web_to_db.as_str(), STACKED, tiered, EGRESS, ADMIN, THREATS, STAGED];
    std::fs::write(dir.path().join("p.yaml"), policies.join("---\n")).unwrap();
    let state = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:?}")).state;
    let index = Index::build(&state, std::path::Path::new("/nonexistent"));
    let set = PolicySet::compile(&state);
    assert!(set.staged && set.enforced.len() >= 4, "tiers: {}", set.enforced.len());
    let ends = [
        "shop/web",
        "shop/db",
        "ops/monitor",
        "dev/web",
        "shop/hostnet",
        "172.16.1.1",
        "172.16.9.1",
        "198.51.100.7",
        "203.0.113.9",
        "8.8.8.8",
    ]
    .map(|who| endpoint_of(&state, &index, who));
    let mut memo = Memo::default();
    let mut records = Vec::new();
    let mut flows = 0;
    for pass in 0..2 {
        for (src, src_ip) in &ends {
            for (dst, dst_ip) in &ends {
                for (proto, port) in
                    [(TCP, 80), (TCP, 5432), (TCP, 6000), (TCP, 9050), (UDP, 53), (flowaudit_common::proto::SCTP, 9999)]
                {
                    let flow = FlowView {
                        src: src.as_deref(),
                        src_ip: *src_ip,
                        dst: dst.as_deref(),
                        dst_ip: *dst_ip,
                        proto,
                        src_port: Some(40000),
                        dst_port: Some(port),
                        icmp: None,
                    };
                    let fresh = set.evaluate(&flow);
                    let kept = set.evaluate_with(Some(&mut memo), src.as_ref(), dst.as_ref(), &flow);
                    assert_eq!(kept, fresh, "pass {pass}: {src_ip} -> {dst_ip} {proto}/{port}");
                    flows += 1;
                    if pass == 0 {
                        for reporter in [Reporter::Src, Reporter::Dst, Reporter::Fwd] {
                            let mut r = FlowRecord::sample(&src_ip.to_string(), 40000, &dst_ip.to_string(), port);
                            r.context.proto = proto;
                            r.context.source = src.clone();
                            r.context.dest = dst.clone();
                            r.reporter = reporter;
                            records.push((r, fresh.clone()));
                        }
                    }
                }
            }
        }
    }
    assert_eq!(flows, 2 * 10 * 10 * 6);
    let traces = |side: Option<&SideVerdict>| {
        side.map_or((Vec::new(), Vec::new()), |s| (s.enforced.trace.to_vec(), s.pending.trace.to_vec()))
    };
    let mut attributor = Attributor::new();
    attributor.update(&state, 0);
    let mut batch: Vec<FlowRecord> = records.iter().map(|(r, _)| r.clone()).collect();
    for pass in 0..2 {
        attributor.attribute(&mut batch);
        for (r, (_, v)) in batch.iter().zip(&records) {
            let (e, i) = (traces(v.egress.as_ref()), traces(v.ingress.as_ref()));
            let (side_action, pending_action, enforced, pending) = match r.reporter {
                Reporter::Src => (
                    v.egress.as_ref().map_or(Action::Allow, |s| s.enforced.action),
                    v.egress.as_ref().map_or(Action::Allow, |s| s.pending.action),
                    e.0,
                    e.1,
                ),
                Reporter::Dst => (
                    v.ingress.as_ref().map_or(Action::Allow, |s| s.enforced.action),
                    v.ingress.as_ref().map_or(Action::Allow, |s| s.pending.action),
                    i.0,
                    i.1,
                ),
                Reporter::Fwd => (v.action(), v.pending_action(), [e.0, i.0].concat(), [e.1, i.1].concat()),
            };
            let what = format!("pass {pass}: {:?} {:?} -> {:?} {:?}", r.reporter, r.source_ip, r.dest_ip, r.dest_port);
            assert_eq!(
                (r.action, r.pending_action, r.flow_action),
                (side_action, pending_action, v.action()),
                "{what}"
            );
            assert_eq!(r.policies.enforced_policies.to_vec(), enforced, "{what}");
            assert_eq!(r.policies.pending_policies.to_vec(), pending, "{what}");
        }
    }
    // Some flows are denied, some allowed, some pending verdicts differ: the cases are not all alike.
    let actions: std::collections::BTreeSet<_> = batch.iter().map(|r| (r.flow_action, r.pending_action)).collect();
    assert!(actions.len() >= 3, "{actions:?}");
}
