//! Cluster tests: the agent's `kube` source (kube-rs reflectors) against a real kube-apiserver
//! v1.20.2 and etcd, started per test on loopback ([`ApiServer`]). Nothing is mocked; the tests
//! play the kubelet's part (there is none) by patching `pods/status` through the API.
//!
//! The Calico (`crd.projectcalico.org/v1`) and admin policy (`policy.networking.k8s.io/v1alpha1`)
//! kinds come from minimal CRDs with open schemas (`tests/fixtures/crds/`): this API server has no
//! Calico API server, so `projectcalico.org/v3` is either absent, served by a stand-in CRD, or an
//! APIService with no backend.
//!
//! Need the binaries of `cargo xtask kube-apiserver` (`FLOWAUDIT_K8S_BIN`, `FLOWAUDIT_ETCD`).
//! Without them they print "skipped: no kube-apiserver" and pass, unless
//! `FLOWAUDIT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test`), where a skip is a failure.
//! Every wait is bounded and fails with what it waited for and the last state seen.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use flowaudit::cluster::{
    ClusterState, IpNet, KubeNetworkPolicy, NamedPort, Namespace, NetworkSet, Node, Pod, Service, ServiceAccount,
    ServicePort, Tier,
    calico::{Action, PolicyType, PortSpec, Protocol},
    kube::{Options, watch_with},
    manifests,
};
use flowaudit_lab::apiserver::ApiServer;
use k8s_openapi::api::{
    core::v1::{Node as KNode, Pod as KPod},
    networking::v1::NetworkPolicySpec,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    config::{Config, KubeConfigOptions, Kubeconfig},
};
use tokio::{sync::watch::Receiver, time::Instant};

const WAIT: Duration = Duration::from_secs(30);
/// After an API server restart: its own start (8–12 s) plus the watchers' backoff (up to 30 s).
const RESYNC_WAIT: Duration = Duration::from_secs(60);

fn server_or_skip(test: &str) -> Option<ApiServer> {
    // The source's logs (watch failures, reconnects, new versions) with the test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "flowaudit=info".into()),
        )
        .with_test_writer()
        .try_init();
    flowaudit_lab::apiserver::server_or_skip(test)
}

async fn client(server: &ApiServer) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("client config");
    Client::try_from(config).expect("client")
}

fn options() -> Options {
    Options { ready_timeout: WAIT, ..Options::default() }
}

/// Waits until the published state satisfies `pred`; fails after `timeout` naming `what`.
async fn wait_for(
    rx: &mut Receiver<Arc<ClusterState>>,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let start = Instant::now();
    loop {
        let state = rx.borrow_and_update().clone();
        if pred(&state) {
            eprintln!("{what}: seen in version {} after {:.1} s", state.version, start.elapsed().as_secs_f64());
            return state;
        }
        match tokio::time::timeout_at(start + timeout, rx.changed()).await {
            Err(_) => panic!("{what}: not seen within {timeout:?}; last state (version {}): {state:#?}", state.version),
            Ok(Err(_)) => panic!("{what}: the state channel closed"),
            Ok(Ok(())) => {}
        }
    }
}

fn pod<'a>(state: &'a ClusterState, ns: &str, name: &str) -> Option<&'a Pod> {
    state.pods.iter().find(|p| p.namespace == ns && p.name == name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> flowaudit::cluster::Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The kubelet's part: phase Running and the pod IP, on the status subresource.
async fn set_pod_ip(client: &Client, ns: &str, name: &str, pod_ip: &str) {
    let patch = serde_json::json!({"status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}});
    Api::<KPod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("PATCH pods/{name}/status: {e}"));
}

const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {zone: z1}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web-sa, namespace: shop, labels: {role: frontend}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  generateName: web-
  labels: {app: web, tier: frontend}
  annotations: {flowaudit.io/cgroup: kubepods/podweb1, note: dropped}
spec:
  serviceAccountName: web-sa
  nodeName: node-1
  containers:
  - name: web
    image: nginx
    env: [{name: A, value: b}]
    ports: [{name: http, containerPort: 8080}, {containerPort: 9090}, {name: dns, containerPort: 53, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-1
  containers: [{name: db, image: postgres}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: web}}
    ports: [{protocol: TCP, port: 5432}]
"#;

/// Applies [`SHOP`], gives the node an address and the pods their IPs (as kubelets would).
async fn apply_shop(server: &ApiServer, client: &Client) {
    server.kubectl_stdin(&["apply", "-f", "-"], SHOP).expect("kubectl apply");
    let node_status = serde_json::json!({"status": {"addresses": [
        {"type": "InternalIP", "address": "192.168.50.10"}, {"type": "Hostname", "address": "node-1"}]}});
    Api::<KNode>::all(client.clone())
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&node_status))
        .await
        .expect("PATCH nodes/node-1/status");
    set_pod_ip(client, "shop", "web-1", "10.244.0.5").await;
    set_pod_ip(client, "shop", "db-1", "10.244.0.6").await;
}

fn shop_complete(s: &ClusterState) -> bool {
    pod(s, "shop", "web-1").is_some_and(|p| !p.ips.is_empty())
        && pod(s, "shop", "db-1").is_some_and(|p| !p.ips.is_empty())
        && s.nodes.iter().any(|n| n.name == "node-1" && !n.addresses.is_empty())
        && s.services.iter().any(|x| x.namespace == "shop")
        && s.network_policies.iter().any(|x| x.namespace == "shop")
        && s.service_accounts.iter().any(|x| x.namespace == "shop")
}

/// (a) Everything applied with kubectl, and the statuses patched, arrives with exact fields; the
/// state equals what the manifests source makes of `kubectl get -o yaml` of the same objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_arrive_with_exact_fields() {
    let Some(server) = server_or_skip("objects_arrive_with_exact_fields") else { return };
    let client = client(&server).await;
    let mut rx = watch_with(client.clone(), options()).await.expect("kube source ready");
    let first = rx.borrow().clone();
    assert_eq!(first.version, 0);
    assert!(first.namespaces.contains_key("kube-system"), "{first:#?}");
    assert!(first.services.iter().any(|s| s.namespace == "default" && s.name == "kubernetes"), "{first:#?}");

    apply_shop(&server, &client).await;
    let state = wait_for(&mut rx, "the shop objects with pod IPs", WAIT, shop_complete).await;
    assert!(state.version > first.version);

    assert_eq!(state.namespaces["shop"], Namespace { name: "shop".into(), labels: labels(&[("team", "web")]) });
    let uid = server.kubectl(&["-n", "shop", "get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"]).unwrap();
    assert!(!uid.is_empty());
    assert_eq!(
        pod(&state, "shop", "web-1").unwrap(),
        &Pod {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid,
            labels: labels(&[("app", "web"), ("tier", "frontend")]),
            generate_name: Some("web-".into()),
            ips: vec![ip("10.244.0.5")],
            host_network: false,
            node_name: Some("node-1".into()),
            service_account: "web-sa".into(),
            named_ports: vec![
                NamedPort { name: "http".into(), port: 8080, protocol: "TCP".into() },
                NamedPort { name: "dns".into(), port: 53, protocol: "UDP".into() },
            ],
            cgroup: Some("kubepods/podweb1".into()),
        }
    );
    let db = pod(&state, "shop", "db-1").unwrap();
    assert_eq!(
        (db.ips.clone(), db.service_account.as_str(), db.labels.clone()),
        (vec![ip("10.244.0.6")], "default", labels(&[("app", "db")]))
    );
    assert_eq!(
        state.services.iter().find(|s| s.namespace == "shop").unwrap(),
        &Service {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ips: vec![ip("10.96.0.50")],
            ports: vec![ServicePort { name: "http".into(), port: 80, protocol: "TCP".into() }],
            selector: labels(&[("app", "web")]),
        }
    );
    assert_eq!(
        state.nodes,
        vec![Node { name: "node-1".into(), labels: labels(&[("zone", "z1")]), addresses: vec![ip("192.168.50.10")] }]
    );
    assert_eq!(
        state.service_accounts.iter().find(|s| s.namespace == "shop").unwrap(),
        &ServiceAccount { namespace: "shop".into(), name: "web-sa".into(), labels: labels(&[("role", "frontend")]) }
    );
    let spec: NetworkPolicySpec = serde_json::from_value(serde_json::json!({
        "podSelector": {"matchLabels": {"app": "db"}},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"app": "web"}}}, {"namespaceSelector": {"matchLabels": {"team": "web"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}]
        }]
    }))
    .unwrap();
    assert_eq!(
        state.network_policies,
        vec![KubeNetworkPolicy { namespace: "shop".into(), name: "db-from-web".into(), spec }]
    );

    // The same conversion rules as the manifests source: the API's objects, dumped by kubectl
    // and read as manifests, give the same state.
    let dump = server
        .kubectl(&[
            "get",
            "namespaces,nodes,pods,services,serviceaccounts,networkpolicies.networking.k8s.io",
            "-A",
            "-o",
            "yaml",
        ])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), dump).unwrap();
    let mut from_files = manifests::load_dir(dir.path()).expect("kubectl's dump reads as manifests").state;
    from_files.version = state.version;
    assert_eq!(from_files, *state, "the kube source and the manifests source disagree on the same objects");
}

/// (b) A label change, deletions and a new object are each published within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletes_are_published() {
    let Some(server) = server_or_skip("updates_and_deletes_are_published") else { return };
    let client = client(&server).await;
    let mut rx = watch_with(client.clone(), options()).await.expect("kube source ready");
    apply_shop(&server, &client).await;
    let before = wait_for(&mut rx, "the shop objects", WAIT, shop_complete).await;

    server.kubectl(&["-n", "shop", "label", "pod", "web-1", "app=api", "--overwrite"]).unwrap();
    let after = wait_for(&mut rx, "web-1's new label app=api", WAIT, |s| {
        pod(s, "shop", "web-1").is_some_and(|p| p.labels == labels(&[("app", "api"), ("tier", "frontend")]))
    })
    .await;
    assert!(after.version > before.version);
    assert_eq!(pod(&after, "shop", "web-1").unwrap().ips, vec![ip("10.244.0.5")], "the rest of the pod is unchanged");

    // No kubelet confirms a graceful deletion of a pod bound to a node: force it, as one would.
    server.kubectl(&["-n", "shop", "delete", "pod", "db-1", "--grace-period=0", "--force"]).unwrap();
    server.kubectl(&["-n", "shop", "delete", "networkpolicy", "db-from-web"]).unwrap();
    let after_delete = wait_for(&mut rx, "db-1 and db-from-web deleted", WAIT, |s| {
        pod(s, "shop", "db-1").is_none() && !s.network_policies.iter().any(|n| n.namespace == "shop")
    })
    .await;
    assert!(pod(&after_delete, "shop", "web-1").is_some());

    server.kubectl(&["create", "namespace", "billing"]).unwrap();
    wait_for(&mut rx, "namespace billing", WAIT, |s| s.namespaces.contains_key("billing")).await;
}

/// (c) With the API server stopped the last state stays published (no empty or partial state);
/// after a restart over the same etcd, changes made then are seen (the watchers reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_the_state_and_a_restart_resyncs() {
    let Some(mut server) = server_or_skip("outage_keeps_the_state_and_a_restart_resyncs") else { return };
    let client = client(&server).await;
    let mut rx = watch_with(client.clone(), options()).await.expect("kube source ready");
    apply_shop(&server, &client).await;
    let before = wait_for(&mut rx, "the shop objects", WAIT, shop_complete).await;

    server.stop_apiserver();
    let down = std::time::Instant::now();
    // Long enough for every watch to break and fail a few reconnects.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = rx.borrow_and_update().clone();
    assert!(
        Arc::ptr_eq(&during, &before) || *during == *before,
        "the state changed while the API server was down: {during:#?}"
    );
    assert!(!rx.has_changed().unwrap(), "nothing is published while the API server is down");
    assert!(shop_complete(&during));

    server.start_apiserver().expect("kube-apiserver restarts over the same etcd");
    eprintln!("API server down for {:.1} s", down.elapsed().as_secs_f64());
    server.kubectl(&["-n", "shop", "label", "pod", "web-1", "app=api", "--overwrite"]).unwrap();
    server
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: shop, labels: {app: web}}\n\
             spec: {nodeName: node-1, containers: [{name: web, image: nginx}]}\n",
        )
        .unwrap();
    set_pod_ip(&client, "shop", "web-2", "10.244.0.7").await;
    server.kubectl(&["-n", "shop", "delete", "service", "web"]).unwrap();
    let after = wait_for(&mut rx, "the changes made after the restart", RESYNC_WAIT, |s| {
        pod(s, "shop", "web-1").is_some_and(|p| p.labels.get("app").map(String::as_str) == Some("api"))
            && pod(s, "shop", "web-2").is_some_and(|p| p.ips == vec![ip("10.244.0.7")])
            && !s.services.iter().any(|x| x.namespace == "shop")
    })
    .await;
    assert!(after.version > before.version);
    assert!(pod(&after, "shop", "db-1").is_some(), "objects untouched across the outage are still there");
}

/// The test CRDs: `crd.projectcalico.org/v1` NetworkPolicy, GlobalNetworkPolicy, Tier,
/// GlobalNetworkSet; `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy and
/// BaselineAdminNetworkPolicy.
fn crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/crds")
}

/// Applies the CRDs of `dir` (not below it) and waits until they are established and listed by
/// discovery (`plurals`: `(apiVersion, plural)`).
fn install_crds(server: &ApiServer, dir: &Path, plurals: &[(&str, &str)]) {
    let dir = dir.display().to_string();
    server.kubectl(&["apply", "--recursive=false", "-f", &dir]).expect("kubectl apply the CRDs");
    server
        .kubectl(&["wait", "--recursive=false", "--for=condition=established", "--timeout=60s", "-f", &dir])
        .expect("the CRDs are established");
    let start = std::time::Instant::now();
    for (api_version, plural) in plurals {
        loop {
            let list = server.kubectl(&["get", "--raw", &format!("/apis/{api_version}")]).unwrap_or_default();
            if list.contains(&format!("\"name\":\"{plural}\"")) {
                break;
            }
            assert!(start.elapsed() < WAIT, "{api_version} {plural} not in discovery after {WAIT:?}: {list}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const TEST_KINDS: &[(&str, &str)] = &[
    ("crd.projectcalico.org/v1", "networkpolicies"),
    ("crd.projectcalico.org/v1", "globalnetworkpolicies"),
    ("crd.projectcalico.org/v1", "tiers"),
    ("crd.projectcalico.org/v1", "globalnetworksets"),
    ("policy.networking.k8s.io/v1alpha1", "adminnetworkpolicies"),
    ("policy.networking.k8s.io/v1alpha1", "baselineadminnetworkpolicies"),
];

/// The same objects, listed by kubectl.
const TEST_RESOURCES: &str = "tiers.crd.projectcalico.org,globalnetworkpolicies.crd.projectcalico.org,networkpolicies.crd.projectcalico.org,\
globalnetworksets.crd.projectcalico.org,adminnetworkpolicies.policy.networking.k8s.io,baselineadminnetworkpolicies.policy.networking.k8s.io";

const POLICIES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: crd.projectcalico.org/v1
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: security.db-egress}
spec:
  tier: security
  order: 10
  selector: app == 'db'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {selector: role == 'backup', ports: [5432, "6000:6010"]}
  - action: Deny
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  order: 200.5
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    source: {nets: [10.0.0.0/8, 192.168.1.7], selector: has(role)}
    destination: {ports: [80, http]}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkSet
metadata: {name: partners, labels: {kind: partner}}
spec: {nets: [198.51.100.7/24, "2001:db8::/32"]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: cluster-control}
spec:
  priority: 20
  subject: {namespaces: {matchLabels: {team: web}}}
  ingress:
  - name: allow-monitoring
    action: Allow
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
    ports: [{portNumber: {protocol: TCP, port: 9090}}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{name: default-deny, action: Deny, from: [{namespaces: {}}]}]
"#;

/// A GlobalNetworkPolicy the CRD's open schema admits but whose selector does not parse.
const BROKEN: &str = "apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: broken}\n\
                      spec: {selector: \"app == 'web\", types: [Ingress]}\n";

fn policies_complete(s: &ClusterState) -> bool {
    s.tiers.len() == 1
        && s.calico_policies.len() == 2
        && s.network_sets.len() == 1
        && s.admin_policies.len() == 1
        && s.baseline_admin_policy.is_some()
}

/// The part of a state the Calico and admin policy kinds make.
fn policy_part(s: &ClusterState) -> ClusterState {
    ClusterState {
        calico_policies: s.calico_policies.clone(),
        staged_kube_policies: s.staged_kube_policies.clone(),
        tiers: s.tiers.clone(),
        network_sets: s.network_sets.clone(),
        host_endpoints: s.host_endpoints.clone(),
        admin_policies: s.admin_policies.clone(),
        baseline_admin_policy: s.baseline_admin_policy.clone(),
        ..ClusterState::default()
    }
}

/// The policy part of what the manifests source makes of `text`.
fn from_manifests(text: &str) -> ClusterState {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("objects.yaml"), text).unwrap();
    policy_part(
        &manifests::load_dir(dir.path()).unwrap_or_else(|e| panic!("the manifests source refuses them: {e:#?}")).state,
    )
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// (d) Calico and admin policy objects in their CRDs arrive with exact fields, equal to what the
/// manifests source makes of the same YAML and of kubectl's dump of them; an object the CRD admits
/// but flowaudit cannot read is left out while the rest is there, and is read once fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_and_admin_kinds_arrive_like_manifests() {
    let Some(server) = server_or_skip("calico_and_admin_kinds_arrive_like_manifests") else { return };
    install_crds(&server, &crds(), TEST_KINDS);
    let client = client(&server).await;
    let mut rx = watch_with(client.clone(), options()).await.expect("kube source ready");
    assert_eq!(policy_part(&rx.borrow()), ClusterState::default(), "the CRDs are empty");

    // The broken one first: it is in the watch of its kind before the good GlobalNetworkPolicy.
    server.kubectl_stdin(&["apply", "-f", "-"], BROKEN).expect("the open schema admits the broken policy");
    server.kubectl_stdin(&["apply", "-f", "-"], POLICIES).expect("kubectl apply");
    let state = wait_for(&mut rx, "the Calico and admin policy objects", WAIT, policies_complete).await;

    assert_eq!(state.tiers, vec![Tier { name: "security".into(), order: Some(100.0), default_action: Action::Pass }]);
    let names: Vec<(Option<&str>, &str)> =
        state.calico_policies.iter().map(|p| (p.namespace.as_deref(), p.name.as_str())).collect();
    assert_eq!(names, [(Some("shop"), "allow-web"), (None, "security.db-egress")], "the broken policy is left out");
    let web = &state.calico_policies[0].spec;
    assert_eq!(
        (web.tier.as_deref(), web.order, web.selector.as_deref(), web.types.as_ref()),
        (None, Some(200.5), Some("app == 'web'"), None)
    );
    let [allow] = &web.ingress[..] else { panic!("{:?}", web.ingress) };
    assert_eq!((allow.action, allow.protocol), (Action::Allow, Some(Protocol::Tcp)));
    assert_eq!(allow.source.nets, vec![net("10.0.0.0/8"), net("192.168.1.7/32")]);
    assert_eq!(allow.source.selector.as_deref(), Some("has(role)"));
    assert_eq!(allow.destination.ports, vec![PortSpec::Number(80), PortSpec::Named("http".into())]);
    let db = &state.calico_policies[1].spec;
    assert_eq!(
        (db.tier.as_deref(), db.order, db.types.as_deref()),
        (Some("security"), Some(10.0), Some(&[PolicyType::Egress][..]))
    );
    assert_eq!(db.egress.iter().map(|r| r.action).collect::<Vec<_>>(), [Action::Allow, Action::Deny]);
    assert_eq!(db.egress[0].destination.ports, vec![PortSpec::Number(5432), PortSpec::Range(6000, 6010)]);
    assert_eq!(db.egress[0].destination.selector.as_deref(), Some("role == 'backup'"));
    assert_eq!(
        state.network_sets,
        vec![NetworkSet {
            namespace: None,
            name: "partners".into(),
            labels: labels(&[("kind", "partner")]),
            nets: vec![net("198.51.100.0/24"), net("2001:db8::/32")],
        }]
    );
    let anp = &state.admin_policies[0];
    assert_eq!((anp.name.as_str(), anp.priority, anp.spec.ingress.len()), ("cluster-control", 20, 1));
    assert_eq!(anp.spec.ingress[0].name.as_deref(), Some("allow-monitoring"));
    assert_eq!(
        state.baseline_admin_policy.as_ref().map(|b| (b.name.as_str(), b.spec.ingress.len())),
        Some(("default", 1))
    );

    // Exactly what the manifests source makes of the same YAML.
    assert_eq!(
        policy_part(&state),
        from_manifests(POLICIES),
        "the kube source and the manifests source disagree on the same YAML"
    );

    // Fixed, the broken policy is read.
    server
        .kubectl(&[
            "patch",
            "globalnetworkpolicies.crd.projectcalico.org",
            "broken",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":"app == 'web'"}}"#,
        ])
        .unwrap();
    let fixed =
        wait_for(&mut rx, "the fixed policy", WAIT, |s| s.calico_policies.iter().any(|p| p.name == "broken")).await;
    assert_eq!(fixed.calico_policies.len(), 3);

    // And what it makes of kubectl's dump of the objects (managed fields and all).
    let dump = server.kubectl(&["get", TEST_RESOURCES, "-A", "-o", "yaml"]).unwrap();
    assert!(dump.contains("managedFields"), "the dump is the whole objects");
    assert_eq!(
        policy_part(&fixed),
        from_manifests(&dump),
        "the kube source and the manifests source disagree on kubectl's dump"
    );
}

/// (e) A changed order, a deletion and a new tier are each published within a bounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_and_admin_updates_and_deletes_are_published() {
    let Some(server) = server_or_skip("calico_and_admin_updates_and_deletes_are_published") else { return };
    install_crds(&server, &crds(), TEST_KINDS);
    // Applied before the start: the first state has them.
    server.kubectl_stdin(&["apply", "-f", "-"], POLICIES).expect("kubectl apply");
    let client = client(&server).await;
    let mut rx = watch_with(client.clone(), options()).await.expect("kube source ready");
    let first = rx.borrow().clone();
    assert!(policies_complete(&first), "{first:#?}");
    assert_eq!(policy_part(&first), from_manifests(POLICIES));

    server
        .kubectl(&[
            "patch",
            "globalnetworkpolicies.crd.projectcalico.org",
            "security.db-egress",
            "--type=merge",
            "-p",
            r#"{"spec":{"order":5}}"#,
        ])
        .unwrap();
    server.kubectl(&["delete", "globalnetworksets.crd.projectcalico.org", "partners"]).unwrap();
    let after = wait_for(&mut rx, "the new order and the deleted network set", WAIT, |s| {
        s.calico_policies.iter().any(|p| p.name == "security.db-egress" && p.spec.order == Some(5.0))
            && s.network_sets.is_empty()
    })
    .await;
    assert!(after.version > first.version);
    assert_eq!(after.tiers, first.tiers, "the rest is unchanged");
    assert_eq!(after.admin_policies, first.admin_policies);
    let web = |s: &ClusterState| s.calico_policies.iter().find(|p| p.name == "allow-web").cloned();
    assert_eq!(web(&after), web(&first));

    server.kubectl(&["delete", "baselineadminnetworkpolicies.policy.networking.k8s.io", "default"]).unwrap();
    server
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: crd.projectcalico.org/v1\nkind: Tier\nmetadata: {name: platform}\nspec: {order: 300}\n",
        )
        .unwrap();
    wait_for(&mut rx, "the baseline gone and tier platform", WAIT, |s| {
        s.baseline_admin_policy.is_none() && s.tiers.iter().any(|t| t.name == "platform" && t.order == Some(300.0))
    })
    .await;
}

/// (f) Each Calico kind is read from `projectcalico.org/v3` where it is served (here by a stand-in
/// CRD for Tier), else from `crd.projectcalico.org/v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_kinds_are_read_from_v3_where_served() {
    let Some(server) = server_or_skip("calico_kinds_are_read_from_v3_where_served") else { return };
    install_crds(&server, &crds(), TEST_KINDS);
    install_crds(&server, &crds().join("v3-standin"), &[("projectcalico.org/v3", "tiers")]);
    server
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: crd.projectcalico.org/v1\nkind: Tier\nmetadata: {name: in-crd}\nspec: {order: 1}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: in-v3}\nspec: {order: 2}\n---\n\
             apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: in-v3.p}\n\
             spec: {tier: in-v3, selector: all()}\n",
        )
        .expect("kubectl apply");
    let client = client(&server).await;
    let rx = watch_with(client, options()).await.expect("kube source ready");
    let state = rx.borrow().clone();
    assert_eq!(
        state.tiers,
        vec![Tier { name: "in-v3".into(), order: Some(2.0), default_action: Action::Deny }],
        "Tier from v3 only"
    );
    let names: Vec<&str> = state.calico_policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["in-v3.p"], "GlobalNetworkPolicy from the CRD (v3 does not serve it here)");
}

/// (g) A Calico API server that is registered but does not answer (an APIService with no
/// backend): discovery says so (503) and the kinds are read from the CRDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_calico_api_server_falls_back_to_the_crds() {
    let Some(server) = server_or_skip("an_unavailable_calico_api_server_falls_back_to_the_crds") else { return };
    install_crds(&server, &crds(), TEST_KINDS);
    server
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v3.projectcalico.org}\n\
             spec: {group: projectcalico.org, version: v3, groupPriorityMinimum: 1500, versionPriority: 200,\n  \
             service: {name: calico-api, namespace: calico-apiserver, port: 443}, insecureSkipTLSVerify: true}\n---\n\
             apiVersion: crd.projectcalico.org/v1\nkind: Tier\nmetadata: {name: in-crd}\nspec: {order: 1}\n",
        )
        .expect("kubectl apply");
    // The group is listed and its version does not answer, as when Calico's API server is down
    // (a 404 until the aggregator has set up the version's proxy, then 503).
    let start = std::time::Instant::now();
    loop {
        let groups = server.kubectl(&["get", "--raw", "/apis"]).unwrap();
        let version = server.kubectl(&["get", "--raw", "/apis/projectcalico.org/v3"]).map_err(|e| e.to_string());
        if groups.contains("\"projectcalico.org/v3\"")
            && version.as_ref().is_err_and(|e| e.contains("ServiceUnavailable"))
        {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "projectcalico.org/v3 is not listed and unavailable: {version:?}; /apis: {groups}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let client = client(&server).await;
    let rx = watch_with(client, options()).await.expect("kube source ready despite the unavailable API");
    let state = rx.borrow().clone();
    assert_eq!(state.tiers, vec![Tier { name: "in-crd".into(), order: Some(1.0), default_action: Action::Deny }]);
}

/// The agent binary (`flowaudit run --cluster kube`) against the test API server: in the root
/// network namespace (the API server listens on its loopback), the cgroup hook on an empty lab
/// cgroup (it counts nothing), its restart state in `state`.
struct RunningAgent {
    lab: flowaudit_lab::Lab,
    pid: u32,
}

impl RunningAgent {
    fn start(server: &ApiServer, logs: &Path, state: &Path, extra: &[&str]) -> RunningAgent {
        let mut lab = flowaudit_lab::Lab::new(0).expect("a lab cgroup");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = std::process::Command::new(flowaudit_lab::workspace_bin("flowaudit"));
        cmd.arg("run")
            .arg("--cluster")
            .arg("kube")
            .arg("--cgroup")
            .arg(&lab.cgroup)
            .arg("--flow-log-dir")
            .arg(logs)
            .arg("--state-dir")
            .arg(state)
            .args(["--flush-interval", "1s", "--node", "audit-node", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("KUBECONFIG", server.kubeconfig())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let pid = lab.spawn(cmd).expect("the agent starts");
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut s| {
                use std::io::{Read as _, Write as _};
                s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(s, "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                Some(text.starts_with("HTTP/1.1 200"))
            });
            if ready == Some(true) {
                return RunningAgent { lab, pid };
            }
            if let Some(status) = lab.wait(pid, Duration::from_millis(200)) {
                panic!("the agent exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "the agent was not ready within {:?}", WAIT * 2);
        }
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        self.lab.wait(self.pid, Duration::from_secs(30)).expect("the agent stops within 30 s")
    }
}

/// The events of `audit.log` (every line is JSON).
fn audit_events(logs: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(logs.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit.log line {l:?}: {e}")))
        .collect()
}

/// Waits until `audit.log` holds `n` events; fails after [`WAIT`] showing them.
async fn wait_events(logs: &Path, n: usize, what: &str) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let events = audit_events(logs);
        if events.len() >= n {
            eprintln!("{what}: {} events after {:.1} s", events.len(), start.elapsed().as_secs_f64());
            return events;
        }
        assert!(start.elapsed() < WAIT, "{what}: {n} events not in audit.log within {WAIT:?}: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const AUDITED_POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                              metadata: {name: db-ingress, namespace: shop}\n\
                              spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}\n";

/// (h) The agent writes a NetworkPolicy's create, update and delete to audit.log, each with the
/// objects before and after; a restart replays nothing, and reports once what changed while it
/// was down (marked restart-diff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_are_written_to_audit_log_once() {
    let Some(server) = server_or_skip("policy_changes_are_written_to_audit_log_once") else { return };
    if !flowaudit_lab::is_root() {
        assert!(
            std::env::var("FLOWAUDIT_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
            "the agent needs root and FLOWAUDIT_REQUIRE_ROOT_TESTS=1 forbids skipping"
        );
        eprintln!("skipped: the agent needs root");
        return;
    }
    server.kubectl(&["create", "namespace", "shop"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (logs, state) = (dir.path().join("logs"), dir.path().join("state"));

    let agent = RunningAgent::start(&server, &logs, &state, &[]);
    // The first start ever records the objects there are, and writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_events(&logs), Vec::<serde_json::Value>::new(), "nothing on the first start");

    server.kubectl_stdin(&["apply", "-f", "-"], AUDITED_POLICY).unwrap();
    let created_rv = server
        .kubectl(&["-n", "shop", "get", "networkpolicy", "db-ingress", "-o", "jsonpath={.metadata.resourceVersion}"])
        .unwrap();
    wait_events(&logs, 1, "the create").await;
    server
        .kubectl(&[
            "-n",
            "shop",
            "patch",
            "networkpolicy",
            "db-ingress",
            "--type=merge",
            "-p",
            r#"{"spec":{"policyTypes":["Ingress","Egress"]}}"#,
        ])
        .unwrap();
    wait_events(&logs, 2, "the update").await;
    server.kubectl(&["-n", "shop", "delete", "networkpolicy", "db-ingress"]).unwrap();
    let events = wait_events(&logs, 3, "the delete").await;
    // Nothing else comes (a namespace's or pod's unrelated changes are not written).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_events(&logs).len(), 3, "{:#?}", audit_events(&logs));

    let verbs: Vec<&str> = events.iter().map(|e| e["verb"].as_str().unwrap()).collect();
    assert_eq!(verbs, ["create", "update", "delete"]);
    for e in &events {
        assert_eq!((e["kind"].as_str(), e["apiVersion"].as_str()), (Some("Event"), Some("audit.k8s.io/v1")));
        assert_eq!((e["level"].as_str(), e["stage"].as_str()), (Some("RequestResponse"), Some("ResponseComplete")));
        assert_eq!(e["user"]["username"], "system:flowaudit:observed");
        assert_eq!(e["annotations"]["flowaudit.io/source"], "watch");
        assert_eq!(
            (&e["objectRef"]["resource"], &e["objectRef"]["namespace"], &e["objectRef"]["name"]),
            (&serde_json::json!("networkpolicies"), &serde_json::json!("shop"), &serde_json::json!("db-ingress"))
        );
        assert_eq!(e["objectRef"]["apiGroup"], "networking.k8s.io");
        assert!(e["objectRef"]["uid"].as_str().is_some_and(|u| !u.is_empty()), "{e:#}");
    }
    let (create, update, delete) = (&events[0], &events[1], &events[2]);
    assert_eq!(create["responseStatus"]["code"], 201);
    assert!(create.get("previousObject").is_none());
    assert_eq!(create["objectRef"]["resourceVersion"].as_str(), Some(created_rv.as_str()));
    assert_eq!(create["responseObject"]["kind"], "NetworkPolicy");
    assert_eq!(create["responseObject"]["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert!(create["responseObject"]["metadata"].get("managedFields").is_none());
    assert_eq!(update["previousObject"], create["responseObject"]);
    assert_eq!(update["responseObject"]["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert_eq!(delete["previousObject"], update["responseObject"]);
    assert!(delete.get("responseObject").is_none());
    assert_eq!(agent.stop().code(), Some(0), "SIGTERM: exit 0");

    // Restarted with no change: nothing is replayed.
    let agent = RunningAgent::start(&server, &logs, &state, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(audit_events(&logs).len(), 3, "a restart replays nothing: {:#?}", audit_events(&logs));
    assert_eq!(agent.stop().code(), Some(0));

    // A policy created while the agent is down is reported once after its start.
    server.kubectl_stdin(&["apply", "-f", "-"], &AUDITED_POLICY.replace("db-ingress", "while-down")).unwrap();
    let agent = RunningAgent::start(&server, &logs, &state, &[]);
    let events = wait_events(&logs, 4, "the change made while down").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_events(&logs).len(), 4, "{:#?}", audit_events(&logs));
    assert_eq!(
        (events[3]["verb"].as_str(), events[3]["objectRef"]["name"].as_str()),
        (Some("create"), Some("while-down"))
    );
    assert_eq!(events[3]["annotations"]["flowaudit.io/source"], "restart-diff");
    assert_eq!(agent.stop().code(), Some(0));
}

fn by_source<'a>(events: &'a [serde_json::Value], source: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["annotations"]["flowaudit.io/source"] == source).collect()
}

/// (i) With `--kube-audit-log`, the API server's own events of the policy changes are copied with
/// their user (beside the observed ones); a restart resumes the file where it stopped: nothing
/// twice, and what was logged while the agent was down is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_audit_log_events_keep_their_user_and_resume_after_restart() {
    let Some(server) = server_or_skip("kube_audit_log_events_keep_their_user_and_resume_after_restart") else {
        return;
    };
    if !flowaudit_lab::is_root() {
        assert!(std::env::var("FLOWAUDIT_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"), "needs root");
        eprintln!("skipped: the agent needs root");
        return;
    }
    server.kubectl(&["create", "namespace", "shop"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (logs, state) = (dir.path().join("logs"), dir.path().join("state"));
    let kube_log = server.audit_log();
    let follow = ["--kube-audit-log", kube_log.to_str().unwrap()];

    let agent = RunningAgent::start(&server, &logs, &state, &follow);
    server.kubectl_stdin(&["apply", "-f", "-"], AUDITED_POLICY).unwrap();
    server
        .kubectl(&[
            "-n",
            "shop",
            "patch",
            "networkpolicy",
            "db-ingress",
            "--type=merge",
            "-p",
            r#"{"spec":{"policyTypes":["Ingress","Egress"]}}"#,
        ])
        .unwrap();
    // A pod's status update and a label change: only the label change is kept.
    server
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\n\
             spec: {nodeName: n1, containers: [{name: c, image: nginx}]}\n",
        )
        .unwrap();
    let client = client(&server).await;
    set_pod_ip(&client, "shop", "web", "10.244.0.9").await;
    server.kubectl(&["-n", "shop", "label", "pod", "web", "app=api", "--overwrite"]).unwrap();
    server.kubectl(&["-n", "shop", "delete", "networkpolicy", "db-ingress"]).unwrap();
    // kube-audit-log: the five writes. The watch sees fewer: changes within its debounce
    // (200 ms) arrive as one (here the create and patch of the policy may be one create).
    let start = Instant::now();
    let events = loop {
        let events = audit_events(&logs);
        let deleted = |source: &str| {
            by_source(&events, source).iter().any(|e| e["verb"] == "delete" && e["objectRef"]["name"] == "db-ingress")
        };
        if deleted("watch") && deleted("kube-audit-log") {
            break events;
        }
        assert!(start.elapsed() < WAIT, "the deletes not in audit.log within {WAIT:?}: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_events(&logs), events, "nothing more comes");
    let copied = by_source(&events, "kube-audit-log");
    let summary: Vec<(&str, &str, &str)> = copied
        .iter()
        .map(|e| {
            (
                e["verb"].as_str().unwrap(),
                e["objectRef"]["resource"].as_str().unwrap(),
                e["user"]["username"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create", "networkpolicies", "admin"),
            ("patch", "networkpolicies", "admin"),
            ("create", "pods", "admin"),
            ("patch", "pods", "admin"),
            ("delete", "networkpolicies", "admin"),
        ],
        "the pod's status update is not kept"
    );
    assert_eq!(copied[0]["responseObject"]["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(copied[1]["responseObject"]["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(copied.iter().all(|e| e["stage"] == "ResponseComplete" && e["level"] == "RequestResponse"));
    let watched: Vec<(&str, &str)> = by_source(&events, "watch")
        .iter()
        .map(|e| (e["verb"].as_str().unwrap(), e["objectRef"]["resource"].as_str().unwrap()))
        .collect();
    assert!(watched.contains(&("create", "pods")) && watched.contains(&("delete", "networkpolicies")), "{watched:?}");
    let total = events.len();
    assert_eq!(agent.stop().code(), Some(0));

    // Down while a policy is created: both sources report it once after the start, nothing twice.
    server.kubectl_stdin(&["apply", "-f", "-"], &AUDITED_POLICY.replace("db-ingress", "while-down")).unwrap();
    let agent = RunningAgent::start(&server, &logs, &state, &follow);
    let events = wait_events(&logs, total + 2, "the change made while down, from both sources").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(audit_events(&logs).len(), total + 2, "nothing twice: {:#?}", audit_events(&logs));
    let new: Vec<(&str, &str, &str)> = events[total..]
        .iter()
        .map(|e| {
            (
                e["annotations"]["flowaudit.io/source"].as_str().unwrap(),
                e["verb"].as_str().unwrap(),
                e["objectRef"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(new.contains(&("restart-diff", "create", "while-down")), "{new:?}");
    assert!(new.contains(&("kube-audit-log", "create", "while-down")), "{new:?}");
    assert_eq!(agent.stop().code(), Some(0));
}

/// `flowaudit reporter --cluster kube` against the real API server: the GlobalReport CRD as
/// generated (deploy/base/crds), a `cis-benchmark` report on `*/5 * * * *` and a
/// `network-access` one (no `--flow-log-dir` given: its runs fail, naming it), `--delay 0s`.
/// The archive says the reporter first saw both 12 minutes ago (as if it had been down since):
/// at start it makes the intervals since then, archives the CIS reports, and records every run
/// in the resources' status through the status subresource (the CIS runs as successful, the
/// network-access runs as failed); a schedule with 15 runs an hour is refused and its status
/// left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_records_runs_in_the_globalreport_status() {
    use flowaudit::report::resource::GlobalReport;
    let Some(server) = server_or_skip("reporter_records_runs_in_the_globalreport_status") else { return };
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds/globalreports.flowaudit.io.yaml");
    server.kubectl(&["apply", "-f", crd.to_str().unwrap()]).expect("apply the GlobalReport CRD");
    server
        .kubectl(&["wait", "--for=condition=established", "--timeout=60s", "crd/globalreports.flowaudit.io"])
        .expect("the CRD is established");
    let reports = "apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {name: cis-5m}\n\
                   spec: {reportType: cis-benchmark, schedule: \"*/5 * * * *\"}\n---\n\
                   apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {name: access}\n\
                   spec: {reportType: network-access, schedule: \"*/5 * * * *\"}\n---\n\
                   apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {name: busy}\n\
                   spec: {reportType: cis-benchmark, schedule: \"*/4 * * * *\"}\n";
    let mut created = None;
    let start = std::time::Instant::now();
    while created.is_none() {
        // Discovery of the new kind can lag the Established condition by a moment.
        match server.kubectl_stdin(&["create", "-f", "-"], reports) {
            Ok(out) => created = Some(out),
            Err(e) => {
                assert!(start.elapsed() < WAIT, "creating the GlobalReports: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kube-bench");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&kb).unwrap();
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/report/testdata/kube-bench");
    for e in std::fs::read_dir(testdata).unwrap() {
        let e = e.unwrap();
        let to = kb.join(e.file_name());
        std::fs::copy(e.path(), &to).unwrap();
        let f = std::fs::File::options().write(true).open(&to).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();
    }
    let first_seen = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(12);
    for name in ["cis-5m", "access"] {
        std::fs::create_dir_all(archive.join(name)).unwrap();
        std::fs::write(archive.join(name).join(".first-seen"), format!("{first_seen}\n")).unwrap();
    }
    // The intervals due: every 5-minute tick after first_seen, up to now, ends one.
    let due = |now: jiff::Timestamp| -> Vec<(jiff::Timestamp, jiff::Timestamp)> {
        let five = 300;
        let mut e = first_seen.as_second() / five * five + five;
        let mut out = Vec::new();
        while e <= now.as_second() {
            out.push((jiff::Timestamp::from_second(e - five).unwrap(), jiff::Timestamp::from_second(e).unwrap()));
            e += five;
        }
        out
    };

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    /// Kills the reporter if the test fails before stopping it.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(flowaudit_lab::workspace_bin("flowaudit"))
        .args(["reporter", "--cluster", "kube", "--delay", "0s", "--format", "csv"])
        .arg("--archive")
        .arg(&archive)
        .arg("--kube-bench")
        .arg(&kb)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", server.kubeconfig())
        .spawn()
        .map(KillOnDrop)
        .expect("start the reporter");

    let api: Api<GlobalReport> = Api::all(client(&server).await);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (cis, access) = loop {
        let cis = api.get("cis-5m").await.expect("get cis-5m");
        let access = api.get("access").await.expect("get access");
        let want = due(jiff::Timestamp::now());
        let ok = |r: &GlobalReport, failed: bool| {
            r.status.as_ref().is_some_and(|s| {
                let list = if failed { &s.last_failed_report_jobs } else { &s.last_successful_report_jobs };
                list.len() == want.len() && s.active_report_jobs.is_empty()
            })
        };
        if !want.is_empty() && ok(&cis, false) && ok(&access, true) {
            break (cis, access);
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the reporter exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s, want {want:?}:\ncis-5m {:?}\naccess {:?}",
            cis.status,
            access.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        child.0.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "the reporter exited with {status}");

    let want = due(jiff::Timestamp::now());
    let s = cis.status.expect("status");
    let got: Vec<_> = s.last_successful_report_jobs.iter().map(|j| (j.start.0, j.end.0)).collect();
    assert_eq!(got, want[..got.len()], "the successful runs, oldest first");
    assert!(s.last_successful_report_jobs.iter().all(|j| j.job_completion_time.is_some() && j.job.is_none()));
    assert!(s.last_failed_report_jobs.is_empty());
    let last = s.last_scheduled_report_job.expect("lastScheduledReportJob");
    assert_eq!((last.start.0, last.end.0), *got.last().unwrap());
    for (start, end) in &got {
        let name = flowaudit::reporter::Interval { start: *start, end: *end }.dir_name();
        let d = archive.join("cis-5m").join(&name);
        assert!(d.join(".complete").is_file() && d.join("all-tests.csv").is_file(), "{}", d.display());
    }
    let a = access.status.expect("status");
    assert!(a.last_successful_report_jobs.is_empty());
    assert_eq!(a.last_failed_report_jobs.len(), got.len());
    assert!(
        !archive
            .join("access")
            .join(flowaudit::reporter::Interval { start: got[0].0, end: got[0].1 }.dir_name())
            .exists()
    );
    let busy = api.get("busy").await.expect("get busy");
    assert_eq!(busy.status, None, "a refused report's status is left alone");
    eprintln!(
        "reporter: {} CIS runs archived and recorded, {} network-access runs recorded as failed",
        got.len(),
        got.len()
    );
}

/// `flowaudit report cis-benchmark --cluster kube` against the real API server: check 5.3.2
/// ("every namespace has a NetworkPolicy") is decided from the server's namespaces and policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_decides_check_5_3_2_from_the_api_server() {
    let Some(server) = server_or_skip("report_decides_check_5_3_2_from_the_api_server") else { return };
    server
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: open}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: shop}\n\
             spec: {podSelector: {}, policyTypes: [Ingress]}\n",
        )
        .expect("create the namespaces and the policy");
    let out = tempfile::tempdir().unwrap();
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/report/testdata/kube-bench/master-1.json");
    let kubeconfig = server.kubeconfig().to_owned();
    let dir = out.path().to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(flowaudit_lab::workspace_bin("flowaudit"))
            .args(["report", "cis-benchmark", "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T00:00:00Z"])
            .args(["--cluster", "kube", "--kube-bench"])
            .arg(bench)
            .arg("--out")
            .arg(&dir)
            .env("KUBECONFIG", kubeconfig)
            .status()
    })
    .await
    .unwrap()
    .expect("run flowaudit report");
    assert!(status.success(), "flowaudit report cis-benchmark --cluster kube: {status}");
    let mut reader = csv::Reader::from_path(out.path().join("all-tests.csv")).unwrap();
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let row = rows.iter().find(|r| &r[col("testIndex")] == "5.3.2").expect("a 5.3.2 row");
    assert_eq!((&row[col("status")], &row[col("decidedBy")]), ("FAIL", "flowaudit"));
    assert!(
        row[col("remediation")]
            .ends_with("Namespaces without a NetworkPolicy: default;kube-node-lease;kube-public;kube-system;open"),
        "{}",
        &row[col("remediation")]
    );
}
