use std::net::IpAddr;

use super::*;
use crate::cluster::{CalicoPolicyKind, HostEndpoint, IpNet, NetworkSet, Tier};
use crate::cluster::{NamedPort, ServicePort};

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f-abcde
  namespace: shop
  uid: 1111-2222
  generateName: web-7d9f-
  labels: {app: web}
  annotations: {flowaudit.io/cgroup: lab/p1}
spec:
  serviceAccountName: web-sa
  nodeName: node-a
  containers:
  - name: c
    image: x
    ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]
status:
  podIP: 10.231.1.2
  podIPs: [{ip: 10.231.1.2}, {ip: "fd00:fa:1::2"}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
# an empty document is fine
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

#[test]
fn reads_every_kind_with_its_fields() {
    let dir = dir_with(&[
        ("a/shop.yaml", GOOD),
        (
            "b/node.json",
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a","labels":{"zone":"z1"}},
                 "status":{"addresses":[{"type":"InternalIP","address":"192.168.0.10"},{"type":"Hostname","address":"node-a"}]}},
                {"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"web-sa","namespace":"shop","labels":{"role":"fe"}}}]}"#,
        ),
        ("notes.txt", "not a manifest"),
    ]);
    let loaded = load_dir(dir.path()).unwrap();
    let s = &loaded.state;
    assert_eq!(s.namespaces["shop"].labels["team"], "web");
    let pod = &s.pods[0];
    assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()), ("shop", "web-7d9f-abcde", "1111-2222"));
    assert_eq!(pod.ips, vec!["10.231.1.2".parse::<IpAddr>().unwrap(), "fd00:fa:1::2".parse().unwrap()]);
    assert_eq!(pod.generate_name.as_deref(), Some("web-7d9f-"));
    assert_eq!(pod.service_account, "web-sa");
    assert_eq!(pod.node_name.as_deref(), Some("node-a"));
    assert_eq!(pod.named_ports, vec![NamedPort { name: "http".into(), port: 8080, protocol: "TCP".into() }]);
    assert_eq!(pod.cgroup.as_deref(), Some("lab/p1"));
    assert!(!pod.host_network);
    let svc = &s.services[0];
    assert_eq!(svc.cluster_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(svc.ports, vec![ServicePort { name: "http".into(), port: 80, protocol: "TCP".into() }]);
    assert_eq!(svc.selector["app"], "web");
    assert_eq!(s.nodes[0].addresses, vec!["192.168.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.service_accounts[0].labels["role"], "fe");
    assert_eq!(s.network_policies[0].name, "default-deny");
    assert_eq!(s.network_policies[0].spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    assert!(loaded.skipped.is_empty());
    let counts = s.counts();
    assert_eq!(
        counts[..6],
        [
            ("Namespace", 1),
            ("Pod", 1),
            ("Service", 1),
            ("Node", 1),
            ("ServiceAccount", 1),
            ("NetworkPolicy.networking.k8s.io/v1", 1)
        ]
    );
    assert!(counts[6..].iter().all(|(_, n)| *n == 0), "{counts:?}");
}

#[test]
fn other_kinds_are_skipped_and_listed() {
    let docs = [
        ("projectcalico.org/v3", "GlobalReport"),
        ("flowaudit.io/v1", "GlobalReport"),
        ("v1", "Endpoints"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("apps/v1", "Deployment"),
        ("projectcalico.org/v3", "GlobalNetworkPolicy"),
    ];
    let text: Vec<String> =
        docs.iter().map(|(a, k)| format!("apiVersion: {a}\nkind: {k}\nmetadata: {{name: x}}\n")).collect();
    let dir = dir_with(&[("x.yaml", &text.join("---\n"))]);
    let loaded = load_dir(dir.path()).unwrap();
    let kinds: Vec<(&str, usize, &str)> =
        loaded.skipped.iter().map(|s| (s.kind.as_str(), s.document, s.reason)).collect();
    let later = "read by a later version of flowaudit (policy attribution)";
    let reports = "read by `flowaudit reporter` (schedules), not cluster state";
    assert_eq!(
        kinds,
        vec![
            ("projectcalico.org/v3/GlobalReport", 1, reports),
            ("flowaudit.io/v1/GlobalReport", 2, reports),
            ("v1/Endpoints", 3, later),
            ("discovery.k8s.io/v1/EndpointSlice", 4, later),
            ("apps/v1/Deployment", 5, "not a kind flowaudit reads"),
        ]
    );
    assert_eq!(LATER.len(), 2, "the LATER list skips only Endpoints and EndpointSlice");
    assert_eq!(loaded.state.calico_policies.len(), 1, "a GlobalNetworkPolicy is read, not skipped");
}

#[test]
fn every_problem_is_reported_with_file_document_and_field() {
    let bad = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
status: {podIPs: [{ip: 10.0.0.300}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  containers: [{name: c, ports: [{containerPort: "eighty"}]}]
---
kind: Pod
metadata: {name: c}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: "10.96.0.x", ports: [{port: 70000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop}
"#;
    let dir = dir_with(&[("bad.yaml", bad), ("broken.yaml", "apiVersion: v1\nkind: [unclosed\n")]);
    let errors = load_dir(dir.path()).unwrap_err();
    let got: Vec<(String, usize, String)> = errors
        .iter()
        .map(|e| (e.file.file_name().unwrap().to_string_lossy().into_owned(), e.document, e.field.clone()))
        .collect();
    let want: Vec<(String, usize, String)> = [
        ("bad.yaml", 1, "status.podIPs[0].ip"),
        ("bad.yaml", 2, "metadata.name"),
        ("bad.yaml", 3, "spec.containers[0].ports[0].containerPort"),
        ("bad.yaml", 4, "apiVersion"),
        ("bad.yaml", 5, "spec.clusterIP"),
        ("bad.yaml", 5, "spec.ports[0].port"),
        ("bad.yaml", 6, "metadata.name"),
        ("broken.yaml", 1, "-"),
    ]
    .iter()
    .map(|(f, d, field)| (f.to_string(), *d, field.to_string()))
    .collect();
    assert_eq!(got, want);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text[0].ends_with("bad.yaml: document 1: status.podIPs[0].ip: \"10.0.0.300\" is not an IP address"),
        "{}",
        text[0]
    );
    assert!(text[2].contains("invalid type"), "{}", text[2]);
    assert!(text[6].contains("duplicate Pod shop/a, first defined in"), "{}", text[6]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_change_is_published_and_a_broken_edit_keeps_the_last_good_state() {
    let dir = dir_with(&[("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n")]);
    let loaded = load_dir(dir.path()).unwrap();
    let mut rx = watch(dir.path().to_owned(), loaded, Duration::from_millis(50));
    std::fs::write(dir.path().join("ns2.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n").unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.changed()).await.expect("published within 2 s").unwrap();
    let state = rx.borrow_and_update().clone();
    assert_eq!(state.version, 1);
    assert_eq!(state.namespaces.keys().collect::<Vec<_>>(), ["one", "two"]);
    std::fs::write(dir.path().join("ns2.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {}\n").unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(400), rx.changed()).await.is_err(),
        "no broken state is published"
    );
    assert_eq!(rx.borrow().version, 1);
}

const POLICIES: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: crd.projectcalico.org/v1
kind: Tier
metadata: {name: platform}
spec: {order: 200}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: security.allow-dns
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
spec:
  tier: security
  order: 10
  selector: all()
  namespaceSelector: kubernetes.io/metadata.name != "kube-system"
  types: [Egress]
  performanceHints: [AssumeNeededOnEveryNode]
  egress:
  - action: Allow
    protocol: UDP
    metadata: {annotations: {owner: net}}
    destination:
      selector: k8s-app == "kube-dns"
      namespaceSelector: projectcalico.org/name == "kube-system"
      ports: [53, dns, "5353:5354"]
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  tier: platform
  order: 100.5
  selector: app == "web"
  ingress:
  - action: Allow
    protocol: TCP
    source:
      nets: [10.0.0.1/8, 192.168.1.7, "fd00::/64"]
      notNets: [10.9.0.0/16]
      serviceAccounts: {names: [frontend], selector: role == "fe"}
    destination:
      ports: [8080]
      notPorts: ["9000:9100"]
  - action: Log
    protocol: 1
    icmp: {type: 8, code: 0}
  - action: Deny
    notProtocol: icmpv6
    ipVersion: 6
  egress:
  - action: Allow
    destination:
      services: {name: api, namespace: backend}
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: default.np}
spec:
  selector: all()
  ingress:
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: tighten, namespace: shop}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: security.drop-old}
spec: {stagedAction: Delete, tier: security}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: web-only, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: shop, labels: {role: partner}}
spec:
  nets: [203.0.113.0/24, 198.51.100.7]
  allowedEgressDomains: [example.com]
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkSet
metadata: {name: blocklist, labels: {feed: bad}}
spec: {nets: ["2001:db8::1/48"]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-a-eth0, labels: {role: edge}}
spec:
  node: node-a
  interfaceName: eth0
  expectedIPs: [192.168.0.10]
  profiles: [projectcalico-default-allow]
  ports: [{name: ssh, port: 22, protocol: TCP}, {name: dns, port: 53, protocol: udp}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: cluster-control}
spec:
  priority: 20
  subject:
    namespaces:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}]
  ingress:
  - name: allow-monitoring
    action: Allow
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
    ports: [{portNumber: {protocol: TCP, port: 9090}}, {portRange: {start: 8000, end: 8100}}]
  - name: pass-db
    action: Pass
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}]
    ports: [{namedPort: metrics}]
  egress:
  - {name: deny-metadata, action: Deny, to: [{networks: [169.254.169.254/32, 10.0.0.1/8]}]}
  - {name: edge-nodes, action: Allow, to: [{nodes: {matchLabels: {role: edge}}}]}
  - {action: Allow, to: [{domainNames: ["*.example.com"]}]}
status: {conditions: []}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: z-first}
spec:
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{name: default-deny, action: Deny, from: [{namespaces: {}}]}]
  egress: [{action: Allow, to: [{networks: [0.0.0.0/0]}]}]
"#;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn reads_calico_and_admin_policy_kinds() {
    use crate::cluster::{
        admin::{
            AdminAction, AdminPort, BaselineAction, EgressPeer, IngressPeer, PortNumber, PortProtocol, PortRange,
            Subject,
        },
        calico::{Action, PolicyType, PortSpec, Protocol, StagedAction},
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    let dir = dir_with(&[("policies.yaml", POLICIES)]);
    let loaded = load_dir(dir.path()).unwrap();
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let s = &loaded.state;

    assert_eq!(
        s.tiers,
        vec![
            Tier { name: "platform".into(), order: Some(200.0), default_action: Action::Deny },
            Tier { name: "security".into(), order: Some(100.0), default_action: Action::Pass },
        ]
    );

    type Id<'a> = (CalicoPolicyKind, Option<&'a str>, &'a str, &'a str, Option<StagedAction>);
    let ids: Vec<Id<'_>> = s
        .calico_policies
        .iter()
        .map(|p| (p.kind, p.namespace.as_deref(), p.name.as_str(), p.tier(), p.staged_action))
        .collect();
    assert_eq!(
        ids,
        vec![
            (CalicoPolicyKind::NetworkPolicy, Some("default"), "default.np", "default", None),
            (CalicoPolicyKind::NetworkPolicy, Some("shop"), "allow-web", "platform", None),
            (CalicoPolicyKind::GlobalNetworkPolicy, None, "security.allow-dns", "security", None),
            (CalicoPolicyKind::StagedNetworkPolicy, Some("shop"), "tighten", "default", Some(StagedAction::Set)),
            (
                CalicoPolicyKind::StagedGlobalNetworkPolicy,
                None,
                "security.drop-old",
                "security",
                Some(StagedAction::Delete)
            ),
        ]
    );

    let web = &s.calico_policies[1].spec;
    assert_eq!((web.order, web.selector.as_deref(), web.types.as_ref()), (Some(100.5), Some(r#"app == "web""#), None));
    let [allow, log, deny] = &web.ingress[..] else { panic!("{:?}", web.ingress) };
    assert_eq!((allow.action, allow.protocol), (Action::Allow, Some(Protocol::Tcp)));
    assert_eq!(allow.source.nets, vec![net("10.0.0.0/8"), net("192.168.1.7/32"), net("fd00::/64")]);
    assert_eq!(allow.source.not_nets, vec![net("10.9.0.0/16")]);
    let sa = allow.source.service_accounts.as_ref().unwrap();
    assert_eq!((sa.names.as_slice(), sa.selector.as_deref()), (&["frontend".to_string()][..], Some(r#"role == "fe""#)));
    assert_eq!(allow.destination.ports, vec![PortSpec::Number(8080)]);
    assert_eq!(allow.destination.not_ports, vec![PortSpec::Range(9000, 9100)]);
    assert_eq!((log.action, log.protocol), (Action::Log, Some(Protocol::Number(1))));
    assert_eq!(log.icmp.map(|i| (i.icmp_type, i.code)), Some((Some(8), Some(0))));
    assert_eq!((deny.action, deny.not_protocol, deny.ip_version), (Action::Deny, Some(Protocol::IcmpV6), Some(6)));
    let svc = web.egress[0].destination.services.as_ref().unwrap();
    assert_eq!((svc.name.as_deref(), svc.namespace.as_deref()), (Some("api"), Some("backend")));

    let dns = &s.calico_policies[2].spec;
    assert_eq!(dns.namespace_selector.as_deref(), Some(r#"kubernetes.io/metadata.name != "kube-system""#));
    assert_eq!((dns.order, dns.types.as_deref()), (Some(10.0), Some(&[PolicyType::Egress][..])));
    assert_eq!((dns.egress[0].action, dns.egress[0].protocol), (Action::Allow, Some(Protocol::Udp)));
    assert_eq!(
        dns.egress[0].destination.ports,
        vec![PortSpec::Number(53), PortSpec::Named("dns".into()), PortSpec::Range(5353, 5354)]
    );
    assert_eq!(
        dns.egress[0].destination.namespace_selector.as_deref(),
        Some(r#"projectcalico.org/name == "kube-system""#)
    );
    assert_eq!(dns.egress[1].action, Action::Pass);
    assert!(s.calico_policies[0].spec.ingress.is_empty(), "a null rule list is empty");
    assert_eq!(s.calico_policies[3].spec.ingress[0].action, Action::Deny);

    let staged = &s.staged_kube_policies[..];
    assert_eq!(staged.len(), 1);
    assert_eq!(
        (staged[0].namespace.as_str(), staged[0].name.as_str(), staged[0].staged_action),
        ("shop", "web-only", StagedAction::Set)
    );
    let pod_selector = staged[0].spec.pod_selector.as_ref().and_then(|p| p.match_labels.as_ref()).unwrap();
    assert_eq!(pod_selector["app"], "web");
    assert_eq!(staged[0].spec.ingress.as_ref().map(Vec::len), Some(1));

    assert_eq!(
        s.network_sets,
        vec![
            NetworkSet {
                namespace: None,
                name: "blocklist".into(),
                labels: [("feed".to_string(), "bad".to_string())].into(),
                nets: vec![net("2001:db8::/48")],
            },
            NetworkSet {
                namespace: Some("shop".into()),
                name: "partners".into(),
                labels: [("role".to_string(), "partner".to_string())].into(),
                nets: vec![net("203.0.113.0/24"), net("198.51.100.7/32")],
            },
        ]
    );

    assert_eq!(
        s.host_endpoints,
        vec![HostEndpoint {
            name: "node-a-eth0".into(),
            labels: [("role".to_string(), "edge".to_string())].into(),
            node: "node-a".into(),
            interface_name: Some("eth0".into()),
            expected_ips: vec!["192.168.0.10".parse::<IpAddr>().unwrap()],
            profiles: vec!["projectcalico-default-allow".into()],
            named_ports: vec![
                NamedPort { name: "ssh".into(), port: 22, protocol: "TCP".into() },
                NamedPort { name: "dns".into(), port: 53, protocol: "UDP".into() },
            ],
        }]
    );

    let anps: Vec<(&str, u16)> = s.admin_policies.iter().map(|a| (a.name.as_str(), a.priority)).collect();
    assert_eq!(anps, vec![("z-first", 5), ("cluster-control", 20)]);
    let anp = &s.admin_policies[1].spec;
    let Subject::Namespaces(subject) = &anp.subject else { panic!("{:?}", anp.subject) };
    assert_eq!(subject.match_expressions.as_ref().unwrap()[0].operator, "NotIn");
    let [monitoring, db] = &anp.ingress[..] else { panic!("{:?}", anp.ingress) };
    assert_eq!((monitoring.name.as_deref(), monitoring.action), (Some("allow-monitoring"), AdminAction::Allow));
    let monitoring_labels = [("kubernetes.io/metadata.name".to_string(), "monitoring".to_string())].into();
    assert_eq!(
        monitoring.from,
        vec![IngressPeer::Namespaces(LabelSelector { match_labels: Some(monitoring_labels), ..Default::default() })]
    );
    assert_eq!(
        monitoring.ports,
        Some(vec![
            AdminPort::PortNumber(PortNumber { protocol: PortProtocol::Tcp, port: 9090 }),
            AdminPort::PortRange(PortRange { protocol: PortProtocol::Tcp, start: 8000, end: 8100 }),
        ])
    );
    assert_eq!(db.action, AdminAction::Pass);
    let IngressPeer::Pods(pods) = &db.from[0] else { panic!("{:?}", db.from) };
    assert_eq!(pods.pod_selector.match_labels.as_ref().unwrap()["app"], "db");
    assert_eq!(db.ports, Some(vec![AdminPort::NamedPort("metrics".into())]));
    let [metadata, nodes, domains] = &anp.egress[..] else { panic!("{:?}", anp.egress) };
    assert_eq!(metadata.action, AdminAction::Deny);
    assert_eq!(metadata.to, vec![EgressPeer::Networks(vec![net("169.254.169.254/32"), net("10.0.0.0/8")])]);
    assert!(matches!(&nodes.to[..], [EgressPeer::Nodes(n)] if n.match_labels.as_ref().unwrap()["role"] == "edge"));
    assert_eq!(domains.to, vec![EgressPeer::DomainNames(vec!["*.example.com".into()])]);

    let banp = s.baseline_admin_policy.as_ref().unwrap();
    assert_eq!(banp.name, "default");
    assert_eq!(banp.spec.subject, Subject::Namespaces(LabelSelector::default()));
    assert_eq!(
        (banp.spec.ingress[0].name.as_deref(), banp.spec.ingress[0].action),
        (Some("default-deny"), BaselineAction::Deny)
    );
    assert_eq!(banp.spec.egress[0].action, BaselineAction::Allow);
    assert_eq!(banp.spec.egress[0].to, vec![EgressPeer::Networks(vec![net("0.0.0.0/0")])]);

    let counts: Vec<(&str, usize)> = s.counts().into_iter().skip(6).collect();
    assert_eq!(
        counts,
        vec![
            ("NetworkPolicy.projectcalico.org/v3", 2),
            ("GlobalNetworkPolicy.projectcalico.org/v3", 1),
            ("StagedNetworkPolicy.projectcalico.org/v3", 1),
            ("StagedGlobalNetworkPolicy.projectcalico.org/v3", 1),
            ("StagedKubernetesNetworkPolicy.projectcalico.org/v3", 1),
            ("Tier.projectcalico.org/v3", 2),
            ("NetworkSet.projectcalico.org/v3", 1),
            ("GlobalNetworkSet.projectcalico.org/v3", 1),
            ("HostEndpoint.projectcalico.org/v3", 1),
            ("AdminNetworkPolicy.policy.networking.k8s.io/v1alpha1", 2),
            ("BaselineAdminNetworkPolicy.policy.networking.k8s.io/v1alpha1", 1),
        ]
    );
}

fn problems(errors: &[ManifestError]) -> Vec<(String, usize, String)> {
    errors
        .iter()
        .map(|e| (e.file.file_name().unwrap().to_string_lossy().into_owned(), e.document, e.field.clone()))
        .collect()
}

fn expect(list: &[(&str, usize, &str)]) -> Vec<(String, usize, String)> {
    list.iter().map(|(f, d, field)| (f.to_string(), *d, field.to_string())).collect()
}

#[test]
fn policy_problems_are_reported_with_file_document_and_field() {
    let bad = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: bad-net, namespace: shop}
spec:
  ingress: [{action: Allow, source: {nets: [10.0.0.0/8, 10.0.0.0/33]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: bad-range}
spec:
  egress: [{action: Allow, protocol: TCP, destination: {ports: ["90:80"]}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: bad-action, namespace: shop}
spec:
  ingress: [{action: Allowed}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: too-low}
spec: {priority: 2000, subject: {namespaces: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: baseline}
spec: {subject: {namespaces: {}}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: nowhere, namespace: shop}
spec: {tier: missing}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: late.ok}
spec: {tier: late}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: late}
"#;
    let dir = dir_with(&[("calico-bad.yaml", bad)]);
    let errors = load_dir(dir.path()).unwrap_err();
    assert_eq!(
        problems(&errors),
        expect(&[
            ("calico-bad.yaml", 1, "spec.ingress[0].source.nets[1]"),
            ("calico-bad.yaml", 2, "spec.egress[0].destination.ports[0]"),
            ("calico-bad.yaml", 3, "spec.ingress[0].action"),
            ("calico-bad.yaml", 4, "spec.priority"),
            ("calico-bad.yaml", 5, "metadata.name"),
            ("calico-bad.yaml", 6, "spec.tier"),
        ])
    );
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text[0].ends_with(
            r#"spec.ingress[0].source.nets[1]: "10.0.0.0/33" is not a CIDR: the prefix length must be 0-32"#
        ),
        "{}",
        text[0]
    );
    assert!(text[1].ends_with(r#"port range "90:80" starts after it ends"#), "{}", text[1]);
    assert!(
        text[2].contains("unknown variant `Allowed`, expected one of `Allow`, `Deny`, `Log`, `Pass`"),
        "{}",
        text[2]
    );
    assert!(text[3].ends_with("spec.priority: 2000 is not a priority (0-1000)"), "{}", text[3]);
    assert!(
        text[4].ends_with(r#"metadata.name: "baseline": a BaselineAdminNetworkPolicy must be named "default""#),
        "{}",
        text[4]
    );
    assert!(text[5].contains(r#"tier "missing" is not defined by a Tier document"#), "{}", text[5]);
}

#[test]
fn every_problem_in_one_policy_is_reported_and_kinds_keep_to_their_fields() {
    let bad = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: many, namespace: shop}
spec:
  namespaceSelector: all()
  ingress:
  - action: Allow
    protocol: tcpx
    source: {nets: [garbage], ports: [http_port]}
  - action: Allow
    destination: {ports: [80]}
    icmp: {code: 3}
  - action: Deny
    protocol: 256
    ipVersion: 5
    destination: {notPorts: [0, "80-90", "http-metrics-long"]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: enforced}
spec: {stagedAction: Delete}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: t1.p}
spec: {tier: t1}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p}
spec: {tier: t1, ingress: {}}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: t1}
spec: {defaultAction: Allow}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: h}
spec: {expectedIPs: [10.0.0.1/32], ports: [{name: SSH, port: 22, protocol: ICMP}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: s}
spec: {nets: [1.2.3.4/8, "1.2.3"]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: a}
spec:
  priority: 1
  subject: {namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: b}
spec:
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Allow, from: [], ports: []}]
  egress:
  - action: Deny
    to: [{networks: [300.0.0.0/8]}]
    ports: [{namedPort: http}, {portRange: {start: 9, end: 8}}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  egress: [{action: Pass, to: [{namespaces: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  egress: [{action: Allow, to: [{domainNames: [example.com]}]}]
"#;
    let dir = dir_with(&[("more.yaml", bad)]);
    let errors = load_dir(dir.path()).unwrap_err();
    assert_eq!(
        problems(&errors),
        expect(&[
            ("more.yaml", 1, "spec.namespaceSelector"),
            ("more.yaml", 1, "spec.ingress[0].protocol"),
            ("more.yaml", 1, "spec.ingress[0].source.nets[0]"),
            ("more.yaml", 1, "spec.ingress[0].source.ports[0]"),
            ("more.yaml", 1, "spec.ingress[1].icmp.code"),
            ("more.yaml", 1, "spec.ingress[1].icmp"),
            ("more.yaml", 1, "spec.ingress[1].protocol"),
            ("more.yaml", 1, "spec.ingress[2].protocol"),
            ("more.yaml", 1, "spec.ingress[2].ipVersion"),
            ("more.yaml", 1, "spec.ingress[2].destination.notPorts[0]"),
            ("more.yaml", 1, "spec.ingress[2].destination.notPorts[1]"),
            ("more.yaml", 1, "spec.ingress[2].destination.notPorts[2]"),
            ("more.yaml", 2, "spec.stagedAction"),
            ("more.yaml", 4, "spec.ingress"),
            ("more.yaml", 5, "spec.defaultAction"),
            ("more.yaml", 6, "spec.node"),
            ("more.yaml", 6, "spec.expectedIPs[0]"),
            ("more.yaml", 6, "spec.ports[0].name"),
            ("more.yaml", 6, "spec.ports[0].protocol"),
            ("more.yaml", 7, "spec.nets[1]"),
            ("more.yaml", 8, "spec.subject"),
            ("more.yaml", 9, "spec.ingress[0].from"),
            ("more.yaml", 9, "spec.ingress[0].ports"),
            ("more.yaml", 9, "spec.egress[0].ports[1].portRange"),
            ("more.yaml", 9, "spec.egress[0].to[0].networks[0]"),
            ("more.yaml", 9, "spec.egress[0].ports[0].namedPort"),
            ("more.yaml", 10, "spec.egress[0].action"),
            ("more.yaml", 11, "spec.egress[0].to[0].domainNames"),
        ])
    );
    let reasons: Vec<&str> = errors.iter().map(|e| e.reason.as_str()).collect();
    let want = [
        "only a GlobalNetworkPolicy has this field (a NetworkPolicy applies to its own namespace)",
        r#""tcpx" is not a protocol (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)"#,
        r#""garbage" is not a CIDR (address/prefix) or an IP address"#,
        r#""http_port" is not a port number, a range a:b or a port name (1-15 of a-z, 0-9 and -, with a letter, not starting or ending with -)"#,
        "an ICMP code needs a type",
        "needs protocol ICMP or ICMPv6",
        "a rule with ports needs protocol TCP, UDP or SCTP",
        "256 is not a protocol number (1-255)",
        "5 is not an IP version (4 or 6)",
        "0 is not a port (1-65535)",
    ];
    assert_eq!(reasons[..want.len()], want);
    assert_eq!(reasons[12], "only the staged kinds have a staged action");
    assert!(reasons[13].contains("invalid type: map, expected a sequence"), "{}", reasons[13]);
    assert_eq!(reasons[14], "Allow is not a tier default action (Deny or Pass)");
    assert_eq!(reasons[16], r#""10.0.0.1/32" is not an IP address"#);
    assert!(reasons[20].contains("expected map with a single key"), "{}", reasons[20]);
    assert_eq!(
        reasons[25],
        "a named port cannot go with networks, nodes or domainNames peers (they have no named ports)"
    );
    assert!(reasons[26].contains("unknown variant `Pass`, expected `Allow` or `Deny`"), "{}", reasons[26]);
    assert_eq!(reasons[27], "only an AdminNetworkPolicy has domainNames peers");
}

#[test]
fn a_tiered_name_and_its_prefixed_form_are_one_policy() {
    let docs = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: t1}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: t1.p, namespace: shop}
spec: {tier: t1}
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: p, namespace: shop}
spec: {tier: t1}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p, namespace: other}
spec: {tier: t1}
"#;
    let dir = dir_with(&[("tiers.yaml", docs)]);
    let errors = load_dir(dir.path()).unwrap_err();
    assert_eq!(problems(&errors), expect(&[("tiers.yaml", 3, "metadata.name")]));
    assert!(
        errors[0].reason.starts_with("duplicate NetworkPolicy.projectcalico.org shop/p, first defined in"),
        "{}",
        errors[0].reason
    );
}

#[test]
fn values_parse_as_calico_and_kubernetes_write_them() {
    use crate::cluster::{
        calico::{IntOrString, PortSpec, Protocol},
        parse_cidr,
    };
    assert_eq!(parse_cidr("10.1.2.3/8"), Ok(net("10.0.0.0/8")));
    assert_eq!(parse_cidr("10.1.2.3"), Ok(net("10.1.2.3/32")));
    assert_eq!(parse_cidr("fd00::1"), Ok(net("fd00::1/128")));
    assert_eq!(
        parse_cidr("fd00::1/129").unwrap_err(),
        r#""fd00::1/129" is not a CIDR: the prefix length must be 0-128"#
    );
    for bad in ["", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "x", "10.0.0.0/8/8", " 10.0.0.0/8"] {
        assert!(parse_cidr(bad).is_err(), "{bad:?}");
    }
    let port = |s: &str| PortSpec::parse(&IntOrString::Str(s.into()));
    assert_eq!(PortSpec::parse(&IntOrString::Int(443)), Ok(PortSpec::Number(443)));
    assert_eq!(port("443"), Ok(PortSpec::Number(443)));
    assert_eq!(port("0:1023"), Ok(PortSpec::Range(0, 1023)));
    assert_eq!(port("80:80"), Ok(PortSpec::Range(80, 80)));
    assert_eq!(port("http-2"), Ok(PortSpec::Named("http-2".into())));
    for bad in ["0", "65536", "80:65536", "1:0", "a:b", "80:", "-http", "http-", "123-456", "Http", "abcdefghijklmnop"]
    {
        assert!(port(bad).is_err(), "{bad:?}");
    }
    assert!(PortSpec::parse(&IntOrString::Int(-1)).is_err());
    let proto = |s: &str| Protocol::parse(&IntOrString::Str(s.into()));
    assert_eq!(proto("UDPLite"), Ok(Protocol::UdpLite));
    assert_eq!(proto("ICMPv6"), Ok(Protocol::IcmpV6));
    assert_eq!(proto("sctp"), Ok(Protocol::Sctp));
    assert_eq!(proto("47"), Ok(Protocol::Number(47)));
    assert_eq!(Protocol::parse(&IntOrString::Int(255)), Ok(Protocol::Number(255)));
    for bad in ["0", "256", "gre", ""] {
        assert!(proto(bad).is_err(), "{bad:?}");
    }
    assert!(Protocol::Number(6).supports_ports() && !Protocol::UdpLite.supports_ports());
}

#[test]
fn calico_selectors_that_do_not_parse_are_reported_with_their_field() {
    let text = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: broken}
spec:
  selector: "app == 'web"
  ingress:
  - action: Allow
    source: {selector: "has(app", namespaceSelector: "global()"}
"#;
    let dir = dir_with(&[("p.yaml", text)]);
    let errors = load_dir(dir.path()).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.selector", "spec.ingress[0].source.selector"]);
    assert!(errors[0].reason.starts_with("selector \"app == 'web\" does not parse at 7:"), "{}", errors[0].reason);
}

/// Every kind of [`API_KINDS`] is read (not skipped) at every version listed for it.
#[test]
fn every_api_kind_is_read_at_each_of_its_versions() {
    for (kind, versions) in API_KINDS {
        for api_version in *versions {
            let value = serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}});
            let built = build_partial([(PathBuf::from("kube:x"), value)]);
            assert!(built.skipped.is_empty(), "{api_version} {kind} is skipped");
        }
    }
}

/// Documents from elsewhere: a document with problems is left out with every problem, named by
/// its origin as document 1; the others give exactly what `load_dir` gives for them.
#[test]
fn partial_builds_leave_out_documents_with_problems_only() {
    let good = [
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.a}\nspec: {tier: security, order: 1, selector: all()}\n",
        "apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkSet\nmetadata: {name: s, labels: {k: v}}\nspec: {nets: [10.0.0.1/8]}\n",
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {subject: {namespaces: {}}}\n",
    ];
    let bad = [
        // A selector that does not parse and a net that is not one: both reported.
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: b}\nspec: {selector: 'app ==', ingress: [{action: Allow, source: {nets: [nope]}}]}\n",
        // A tier no Tier defines: only known at the end, still left out.
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: c, namespace: shop}\nspec: {tier: missing}\n",
        // The same policy as `security.a` (tier prefix): the later one is the duplicate.
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\nspec: {tier: security, order: 2}\n",
    ];
    let value = |text: &str| serde_yaml_ng::from_str::<Value>(text).unwrap();
    let mut documents: Vec<(PathBuf, Value)> =
        good.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("kube:good/{i}")), value(t))).collect();
    documents.extend(bad.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("kube:x-bad/{i}")), value(t))));
    let built = build_partial(documents);
    let problems: Vec<(String, usize, &str)> =
        built.errors.iter().map(|e| (e.file.display().to_string(), e.document, e.field.as_str())).collect();
    assert_eq!(
        problems,
        [
            ("kube:x-bad/0".to_string(), 1, "spec.selector"),
            ("kube:x-bad/0".to_string(), 1, "spec.ingress[0].source.nets[0]"),
            ("kube:x-bad/1".to_string(), 1, "spec.tier"),
            ("kube:x-bad/2".to_string(), 1, "metadata.name"),
        ]
    );
    let dir = dir_with(&[("good.yaml", &good.join("---\n"))]);
    // The model is built from the good documents only; the audit log's objects hold every
    // policy-related document, the broken ones too (creating one is a change all the same).
    let mut model = built.state.clone();
    model.objects = Default::default();
    let mut expected = load_dir(dir.path()).unwrap().state;
    expected.objects = Default::default();
    assert_eq!(model, expected);
    let names: Vec<&str> = built.state.objects.0.keys().map(|k| k.name.as_str()).collect();
    assert!(names.contains(&"b") && names.contains(&"c"), "{names:?}");
    assert!(built.skipped.is_empty());
}

/// `load_text` (the `manifests` fuzz target's entry point) reads one file as `load_dir` reads a
/// directory holding only that file, problems included.
#[test]
fn load_text_reads_one_file_like_load_dir() {
    let dir = dir_with(&[("good.yaml", GOOD)]);
    let from_dir = load_dir(dir.path()).unwrap();
    let from_text = load_text(Path::new("good.yaml"), GOOD).unwrap();
    assert_eq!(from_dir.state.counts(), from_text.state.counts());
    let err = load_text(Path::new("x.yaml"), "kind: Pod\n").unwrap_err();
    assert_eq!(problems(&err), expect(&[("x.yaml", 1, "apiVersion")]));
}
