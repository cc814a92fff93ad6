//! Cluster tests: the agent's `kube` source (kube-rs reflectors) against a real kube-apiserver
//! v1.20.2 and etcd, started per test on loopback ([`ApiServer`]). Nothing is mocked; the tests
//! play the kubelet's part (there is none) by patching `pods/status` through the API.
//!
//! Need the binaries of `cargo xtask kube-apiserver` (`FLOWAUDIT_K8S_BIN`, `FLOWAUDIT_ETCD`).
//! Without them they print "skipped: no kube-apiserver" and pass, unless
//! `FLOWAUDIT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test`), where a skip is a failure.
//! Every wait is bounded and fails with what it waited for and the last state seen.

use std::{net::IpAddr, sync::Arc, time::Duration};

use flowaudit::cluster::{
    ClusterState, KubeNetworkPolicy, NamedPort, Namespace, Node, Pod, Service, ServiceAccount, ServicePort,
    kube::{Options, watch_with},
    manifests,
};
use flowaudit_lab::apiserver::{ApiServer, binaries};
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "flowaudit=info".into()))
        .with_test_writer()
        .try_init();
    if binaries().is_none() {
        assert!(
            std::env::var("FLOWAUDIT_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
            "{test}: FLOWAUDIT_K8S_BIN is not set and FLOWAUDIT_REQUIRE_ROOT_TESTS=1 forbids skipping \
             (run `cargo xtask kube-apiserver` and export what it prints)"
        );
        eprintln!("skipped: no kube-apiserver ({test}: FLOWAUDIT_K8S_BIN is not set)");
        return None;
    }
    Some(ApiServer::start().unwrap_or_else(|e| panic!("{test}: starting etcd + kube-apiserver: {e}")))
}

async fn client(server: &ApiServer) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("client config");
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
    assert_eq!((db.ips.clone(), db.service_account.as_str(), db.labels.clone()), (vec![ip("10.244.0.6")], "default", labels(&[("app", "db")])));
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
        .kubectl(&["get", "namespaces,nodes,pods,services,serviceaccounts,networkpolicies.networking.k8s.io", "-A", "-o", "yaml"])
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
    assert!(Arc::ptr_eq(&during, &before) || *during == *before, "the state changed while the API server was down: {during:#?}");
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
