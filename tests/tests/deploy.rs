//! Deployment tests: `deploy/base` (the kustomize base of the agent, the GlobalReport CRD and the
//! reporter's RBAC) against a real kube-apiserver v1.20.2 and etcd, started per test on loopback
//! ([`ApiServer`]).
//!
//! What a server without a kubelet or a container runtime can prove: every object is accepted
//! (kubectl validates against the server's OpenAPI schema, the server validates and admits),
//! the DaemonSet's pod would be accepted as a pod (server-side dry run of its template), the
//! stored objects carry what the files say, the agent's service account can read exactly the
//! kinds the agent reads and do nothing else, the GlobalReport CRD (generated from the Rust
//! types, applied as committed: it uses nothing 1.20 lacks, so no stripped copy is needed) is
//! established, the sample GlobalReport is stored and read back into the Rust type, the reporter's
//! service account writes its status through the status subresource, and that account can do
//! exactly what the reporter needs, and the reporter's Deployment is stored as written with a pod
//! that passes admission (dry run). What it cannot: run the DaemonSet or the Deployment (no
//! kubelet, no container runtime, no image). `flowaudit reporter --cluster kube` itself runs
//! against the same server in tests/tests/kube.rs.
//!
//! Need the binaries of `cargo xtask kube-apiserver` (`FLOWAUDIT_K8S_BIN`, `FLOWAUDIT_ETCD`).
//! Without them they print "skipped: no kube-apiserver" and pass, unless
//! `FLOWAUDIT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test`), where a skip is a failure.
//! Every kubectl call has a request timeout and every wait is bounded.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use flowaudit_lab::apiserver::{ApiServer, binaries};
use serde_json::Value;

/// How long RBAC may take to see a new binding (its informers; usually well under a second).
const RBAC_WAIT: Duration = Duration::from_secs(30);
/// The request timeout of every kubectl call.
const REQUEST_TIMEOUT: &str = "--request-timeout=30s";
const AGENT: &str = "system:serviceaccount:flowaudit:flowaudit-agent";
const REPORTER: &str = "system:serviceaccount:flowaudit:flowaudit-reporter";
/// The GlobalReport CRD's name.
const CRD: &str = "globalreports.flowaudit.io";

fn server_or_skip(test: &str) -> Option<ApiServer> {
    flowaudit_lab::apiserver::server_or_skip(test)
}

fn base_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

/// The `*.yaml` files of deploy/base and its subdirectories (`crds/`), as paths relative to it,
/// sorted; `kustomization.yaml` left out.
fn base_files() -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![(base_dir(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.expect("entry");
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().expect("file type").is_dir() {
                dirs.push((entry.path(), format!("{name}/")));
            } else if name.ends_with(".yaml") && name != "kustomization.yaml" {
                files.push(name);
            }
        }
    }
    files.sort();
    files
}

/// `kubectl` with a request timeout; panics with kubectl's stderr on failure.
fn kubectl(server: &ApiServer, args: &[&str]) -> String {
    let mut all = vec![REQUEST_TIMEOUT];
    all.extend_from_slice(args);
    server.kubectl(&all).unwrap_or_else(|e| panic!("{e}"))
}

fn kubectl_json(server: &ApiServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let out = kubectl(server, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {}: not JSON ({e}): {out}", args.join(" ")))
}

/// One authorization question about a service account (the agent's unless [`Ask::by`]).
#[derive(Clone, Copy, Debug)]
struct Ask<'a> {
    user: &'a str,
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: &'a str,
    /// Empty: cluster-wide (every namespace, or a cluster-scoped kind).
    namespace: &'a str,
}

fn ask<'a>(verb: &'a str, group: &'a str, resource: &'a str, namespace: &'a str) -> Ask<'a> {
    Ask { user: AGENT, verb, group, resource, subresource: "", namespace }
}

impl<'a> Ask<'a> {
    /// The same question about another user.
    fn by(self, user: &'a str) -> Self {
        Self { user, ..self }
    }

    /// The same question about a subresource.
    fn sub(self, subresource: &'a str) -> Self {
        Self { subresource, ..self }
    }
}

/// API groups this test server serves (`flowaudit.io` once the CRD is established, which the test
/// waits for). `kubectl auth can-i` resolves its RESOURCE argument by
/// discovery, and kubectl 1.20 sends a resource it cannot resolve (Calico's, the admin policy
/// kinds: no CRDs here; the `tier.*` pseudo-resources, which no discovery lists) as one
/// resource named by the whole argument in the core group: a question about something else.
/// For those only the SubjectAccessReview below is asked; likewise for `users` (impersonation),
/// which kubectl 1.20 cannot resolve either.
const SERVED: &[&str] = &["", "networking.k8s.io", "apps", "rbac.authorization.k8s.io", "flowaudit.io"];

fn kubectl_resolves(a: Ask) -> bool {
    SERVED.contains(&a.group) && a.resource != "users"
}

/// Whether `a.user` may do `a`: a SubjectAccessReview for the service account with the groups
/// the API server gives it, and, where the group is served, also `kubectl auth can-i --as`,
/// which must agree. Anything but a clear answer (an error, a timeout) fails the test, so a
/// broken call never passes for "no".
fn allowed(server: &ApiServer, a: Ask) -> bool {
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": a.user,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:flowaudit", "system:authenticated"],
            "resourceAttributes": {
                "verb": a.verb, "group": a.group, "resource": a.resource,
                "subresource": a.subresource, "namespace": a.namespace,
            },
        },
    });
    let out = server
        .kubectl_stdin(&[REQUEST_TIMEOUT, "create", "-f", "-", "-o", "json"], &review.to_string())
        .unwrap_or_else(|e| panic!("SubjectAccessReview {a:?}: {e}"));
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("SubjectAccessReview {a:?}: {e}: {out}"));
    let by_review = status["status"]["allowed"].as_bool().unwrap_or_else(|| panic!("SubjectAccessReview {a:?}: {out}"));
    if kubectl_resolves(a) {
        let by_kubectl = can_i(server, a);
        assert_eq!(by_kubectl, by_review, "kubectl auth can-i and the SubjectAccessReview disagree on {a:?}");
    }
    by_review
}

/// `kubectl auth can-i VERB RESOURCE[.GROUP] [--subresource S] -n NS|--all-namespaces --as USER`:
/// `true` for `yes`, `false` for `no`, a failure for anything else.
fn can_i(server: &ApiServer, a: Ask) -> bool {
    let (bin, _) = binaries().expect("checked by server_or_skip");
    let resource = qualified(a.group, a.resource);
    let mut cmd = Command::new(bin.join("kubectl"));
    cmd.arg("--kubeconfig").arg(server.kubeconfig()).args([
        REQUEST_TIMEOUT,
        "auth",
        "can-i",
        a.verb,
        &resource,
        "--as",
        a.user,
    ]);
    if !a.subresource.is_empty() {
        cmd.args(["--subresource", a.subresource]);
    }
    if a.namespace.is_empty() {
        cmd.arg("--all-namespaces")
    } else {
        cmd.args(["-n", a.namespace])
    };
    let out = cmd.output().expect("running kubectl auth can-i");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match (answer.as_str(), out.status.code()) {
        ("yes", Some(0)) if stderr.is_empty() => true,
        ("no", Some(1)) if stderr.is_empty() => false,
        _ => panic!("kubectl auth can-i {a:?}: exit {:?}, stdout {answer:?}, stderr {stderr:?}", out.status.code()),
    }
}

/// The files `kustomization.yaml` lists under `resources:` (kustomize v2's format: a plain list).
fn kustomization_resources() -> Vec<String> {
    let path = base_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut in_resources = false;
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()) {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_resources = line.trim_end() == "resources:";
        } else if in_resources && let Some(item) = line.trim().strip_prefix("- ") {
            out.push(item.trim().to_owned());
        }
    }
    out
}

/// The ClusterRole's rules as (group, resource) → verbs.
fn rules(role: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().expect("a string").to_owned()).collect()).unwrap_or_default()
    };
    let mut out = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(), "unexpected rule {rule}");
        let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.push((group.clone(), resource, verbs.clone()));
            }
        }
    }
    out.sort();
    out
}

/// What the agent reads (agent/src/cluster/kube.rs), and the reporter too: (API group, resource).
fn agent_reads() -> Vec<(&'static str, &'static str)> {
    let mut out = vec![
        ("", "namespaces"),
        ("", "pods"),
        ("", "services"),
        ("", "nodes"),
        ("", "serviceaccounts"),
        ("networking.k8s.io", "networkpolicies"),
        ("policy.networking.k8s.io", "adminnetworkpolicies"),
        ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
    ];
    for group in ["projectcalico.org", "crd.projectcalico.org"] {
        for resource in [
            "networkpolicies",
            "globalnetworkpolicies",
            "tiers",
            "networksets",
            "globalnetworksets",
            "hostendpoints",
            "stagednetworkpolicies",
            "stagedglobalnetworkpolicies",
            "stagedkubernetesnetworkpolicies",
        ] {
            out.push((group, resource));
        }
    }
    // The Calico API server's per-tier authorization of the tiered kinds.
    for resource in [
        "tier.networkpolicies",
        "tier.globalnetworkpolicies",
        "tier.stagednetworkpolicies",
        "tier.stagedglobalnetworkpolicies",
    ] {
        out.push(("projectcalico.org", resource));
    }
    out
}

/// `resource.group` as kubectl names it (`pods`, `networkpolicies.networking.k8s.io`).
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() { resource.to_owned() } else { format!("{resource}.{group}") }
}

#[test]
fn base_is_accepted_and_each_account_can_do_only_its_part() {
    let Some(server) = server_or_skip("base_is_accepted_and_each_account_can_do_only_its_part") else { return };
    let base = base_dir();
    let base = base.to_str().expect("a UTF-8 path");

    // Every file of the directory (and of crds/) is in the kustomization, so `apply -k` applies
    // all of it.
    let mut listed = kustomization_resources();
    listed.sort();
    assert_eq!(listed, base_files(), "kustomization.yaml's resources are not the files of deploy/base");

    // kubectl 1.20 carries kustomize v2 and validates every object against the server's OpenAPI
    // schema before sending it (an unknown or misplaced field fails here); the server then
    // validates (e.g. mountPropagation Bidirectional without privileged is refused) and admits.
    let out = kubectl(&server, &["apply", "-k", base]);
    eprintln!("kubectl apply -k deploy/base:\n{out}");
    for object in [
        "namespace/flowaudit",
        "serviceaccount/flowaudit-agent",
        "clusterrole.rbac.authorization.k8s.io/flowaudit-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/flowaudit-agent",
        "configmap/flowaudit-config",
        "daemonset.apps/flowaudit-agent",
        "service/flowaudit-metrics",
        "customresourcedefinition.apiextensions.k8s.io/globalreports.flowaudit.io",
        "serviceaccount/flowaudit-reporter",
        "clusterrole.rbac.authorization.k8s.io/flowaudit-reporter",
        "clusterrolebinding.rbac.authorization.k8s.io/flowaudit-reporter",
        "deployment.apps/flowaudit-reporter",
    ] {
        assert!(out.lines().any(|l| l.starts_with(&format!("{object} "))), "{object} not applied:\n{out}");
    }
    // A second apply changes nothing.
    let again = kubectl(&server, &["apply", "-k", base]);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "second apply changed something:\n{again}");

    // The GlobalReport CRD, as generated and committed (no stripped copy: it has no CEL rules, see
    // agent/src/report/resource.rs), is established: its names are accepted and it is served.
    let out = kubectl(&server, &["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{CRD}")]);
    assert!(out.contains("condition met"), "{out}");
    let crd = kubectl_json(&server, &["get", "crd", CRD]);
    let conditions = crd["status"]["conditions"].as_array().expect("conditions");
    for condition in ["NamesAccepted", "Established"] {
        assert!(
            conditions.iter().any(|c| c["type"] == condition && c["status"] == "True"),
            "{CRD}: {condition} is not True: {conditions:?}"
        );
    }
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["kind"], "GlobalReport");
    assert_eq!(crd["spec"]["versions"][0]["name"], "v1");
    assert_eq!(crd["spec"]["versions"][0]["subresources"], serde_json::json!({"status": {}}));
    eprintln!("{CRD}: established");

    // The stored DaemonSet says what the file says (a field the server dropped would show here).
    let ds = kubectl_json(&server, &["-n", "flowaudit", "get", "daemonset", "flowaudit-agent"]);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "flowaudit-agent");
    assert_eq!(pod["tolerations"], serde_json::json!([{"operator": "Exists"}]));
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        serde_json::json!([
            "run",
            "--config",
            "/etc/flowaudit/config.yaml",
            "--cluster",
            "kube",
            "--metrics-addr",
            "$(NODE_IP):9464",
            "--node",
            "$(NODE_NAME)",
            "--pin"
        ])
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()))
        .collect();
    assert_eq!(env, [("NODE_NAME", "spec.nodeName"), ("NODE_IP", "status.hostIP")]);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], serde_json::json!({"add": ["BPF", "NET_ADMIN", "PERFMON"], "drop": ["ALL"]}));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/etc/flowaudit", true),
            ("/sys/fs/bpf", false),
            ("/sys/fs/cgroup", true),
            ("/var/log/flowaudit", false),
            ("/var/lib/flowaudit", false)
        ]
    );
    let svc = kubectl_json(&server, &["-n", "flowaudit", "get", "service", "flowaudit-metrics"]);
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["selector"], ds["spec"]["selector"]["matchLabels"]);
    assert_eq!(svc["metadata"]["annotations"]["prometheus.io/port"], "9464");

    // The pod the DaemonSet controller would create (its template, bound to a node) passes pod
    // validation and admission (priority class lookup included): a server-side dry run.
    let mut template = ds["spec"]["template"].clone();
    template["spec"]["nodeName"] = "node-1".into();
    let dry_pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "flowaudit-agent-dry-run", "namespace": "flowaudit", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    });
    let out = server
        .kubectl_stdin(&[REQUEST_TIMEOUT, "create", "--dry-run=server", "-f", "-"], &dry_pod.to_string())
        .unwrap_or_else(|e| panic!("the DaemonSet's pod, dry run: {e}"));
    assert!(out.contains("created (server dry run)"), "{out}");

    reporter_deployment(&server);

    // The stored ClusterRole: exactly the kinds the agent reads, each with get, list, watch only.
    let role = kubectl_json(&server, &["get", "clusterrole", "flowaudit-agent"]);
    let read: BTreeSet<String> = ["get", "list", "watch"].into_iter().map(String::from).collect();
    let granted = rules(&role);
    for (group, resource, verbs) in &granted {
        assert_eq!(verbs, &read, "{}: verbs {verbs:?}", qualified(group, resource));
    }
    let granted: BTreeSet<(String, String)> = granted.into_iter().map(|(g, r, _)| (g, r)).collect();
    let expected: BTreeSet<(String, String)> =
        agent_reads().into_iter().map(|(g, r)| (g.to_owned(), r.to_owned())).collect();
    assert_eq!(granted, expected, "the ClusterRole's resources are not what the agent reads");

    // The reporter's ClusterRole: the agent's reads, its GlobalReports (read) and their status.
    let role = kubectl_json(&server, &["get", "clusterrole", "flowaudit-reporter"]);
    let status: BTreeSet<String> = ["get", "update", "patch"].into_iter().map(String::from).collect();
    let granted: BTreeSet<(String, String, BTreeSet<String>)> = rules(&role).into_iter().collect();
    let mut expected: BTreeSet<(String, String, BTreeSet<String>)> =
        agent_reads().into_iter().map(|(g, r)| (g.to_owned(), r.to_owned(), read.clone())).collect();
    expected.insert(("flowaudit.io".into(), "globalreports".into(), read.clone()));
    expected.insert(("flowaudit.io".into(), "globalreports/status".into(), status));
    assert_eq!(granted, expected, "the reporter's ClusterRole is not what the reporter needs");

    // RBAC as the server applies it, for both service accounts. A binding is seen by the
    // authorizer through its informers: wait (bounded) for the first "yes" of each.
    let start = Instant::now();
    for user in [AGENT, REPORTER] {
        while !allowed(&server, ask("list", "", "pods", "").by(user)) {
            assert!(start.elapsed() < RBAC_WAIT, "{user} still cannot list pods after {RBAC_WAIT:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    eprintln!("RBAC: bindings effective after {:.1} s", start.elapsed().as_secs_f64());
    // (question, expected answer); asked from a few threads (each answer is one or two kubectl
    // runs of about 0.2 s).
    let mut questions: Vec<(Ask, bool)> = Vec::new();
    for user in [AGENT, REPORTER] {
        for (group, resource) in agent_reads() {
            for verb in ["get", "list", "watch"] {
                questions.push((ask(verb, group, resource, "").by(user), true));
            }
            for verb in ["create", "update", "patch", "delete", "deletecollection"] {
                questions.push((ask(verb, group, resource, "").by(user), false));
            }
        }
        // Namespaced reads hold in any namespace (the binding is cluster-wide).
        questions.push((ask("watch", "", "pods", "kube-system").by(user), true));
        questions.push((ask("list", "networking.k8s.io", "networkpolicies", "default").by(user), true));
        // Nothing else: what the issue names, subresources, other kinds, the escalation paths.
        let sub =
            |verb, resource, subresource, namespace| Ask { user, verb, group: "", resource, subresource, namespace };
        for a in [
            ask("create", "", "pods", "flowaudit"),
            ask("delete", "networking.k8s.io", "networkpolicies", "default"),
            ask("get", "", "secrets", "flowaudit"),
            ask("list", "", "secrets", ""),
            ask("get", "", "configmaps", "flowaudit"),
            ask("list", "", "endpoints", "default"),
            ask("list", "apps", "daemonsets", "flowaudit"),
            ask("create", "batch", "jobs", "flowaudit"),
            ask("impersonate", "", "users", ""),
            ask("escalate", "rbac.authorization.k8s.io", "clusterroles", ""),
            ask("bind", "rbac.authorization.k8s.io", "clusterroles", ""),
            ask("list", "projectcalico.org", "workloadendpoints", ""),
            ask("list", "projectcalico.org", "globalreports", ""),
            ask("create", "flowaudit.io", "globalreports", ""),
            ask("delete", "flowaudit.io", "globalreports", ""),
            ask("update", "flowaudit.io", "globalreports", ""),
            ask("patch", "flowaudit.io", "globalreports", ""),
        ] {
            questions.push((a.by(user), false));
        }
        for a in [
            sub("create", "pods", "exec", "flowaudit"),
            sub("get", "pods", "log", "flowaudit"),
            sub("patch", "pods", "status", "flowaudit"),
            sub("get", "nodes", "proxy", ""),
            sub("create", "serviceaccounts", "token", "flowaudit"),
        ] {
            questions.push((a, false));
        }
        // GlobalReports: the reporter reads them and writes their status; the agent neither.
        let reporter = user == REPORTER;
        for verb in ["get", "list", "watch"] {
            questions.push((ask(verb, "flowaudit.io", "globalreports", "").by(user), reporter));
        }
        for verb in ["get", "update", "patch"] {
            questions.push((ask(verb, "flowaudit.io", "globalreports", "").sub("status").by(user), reporter));
        }
    }
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let server = &server;
        let workers: Vec<_> = questions
            .chunks(questions.len().div_ceil(4))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .filter(|(a, expected)| allowed(server, *a) != *expected)
                        .map(|(a, expected)| {
                            format!("{a:?}: expected {}", if *expected { "allowed" } else { "denied" })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a question panicked")).collect()
    });
    assert!(wrong.is_empty(), "RBAC answers differ from the service accounts' needs:\n{}", wrong.join("\n"));
    eprintln!("RBAC: {} questions answered as expected", questions.len());

    global_reports(&server);
}

/// The reporter's Deployment as stored: one replica (Recreate), its service account, `reporter
/// --cluster kube --archive ...`, no capabilities, non-root, probes on /healthz, requests and
/// limits, the archive volume; and its pod passes validation and admission (server dry run).
fn reporter_deployment(server: &ApiServer) {
    let d = kubectl_json(server, &["-n", "flowaudit", "get", "deployment", "flowaudit-reporter"]);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "flowaudit-reporter");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert!(pod.get("hostNetwork").is_none_or(|h| h == false));
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_array().expect("args").iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[..5], ["reporter", "--cluster", "kube", "--archive", "/var/lib/flowaudit-reports"]);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], serde_json::json!({"drop": ["ALL"]}), "no added capabilities");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    for k in ["requests", "limits"] {
        assert!(c["resources"][k]["cpu"].is_string() && c["resources"][k]["memory"].is_string(), "{k}");
    }
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/lib/flowaudit-reports");
    assert_eq!(pod["volumes"][0]["name"], c["volumeMounts"][0]["name"]);
    // The pod the ReplicaSet controller would create passes validation and admission.
    let template = &d["spec"]["template"];
    let dry_pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "flowaudit-reporter-dry-run", "namespace": "flowaudit", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    });
    let out = server
        .kubectl_stdin(&[REQUEST_TIMEOUT, "create", "--dry-run=server", "-f", "-"], &dry_pod.to_string())
        .unwrap_or_else(|e| panic!("the reporter's pod, dry run: {e}"));
    assert!(out.contains("created (server dry run)"), "{out}");
    eprintln!("deployment/flowaudit-reporter: stored as written, its pod admitted (dry run)");
}

/// deploy/examples/globalreport-cis.yaml on the established CRD: stored as written, read back
/// into the Rust type, listed with the printer columns; its status written by the reporter's
/// service account through the status subresource (and the spec not); a spec the schema refuses
/// is refused.
fn global_reports(server: &ApiServer) {
    use flowaudit::report::{Kind, NamedReport, resource::GlobalReport};

    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/globalreport-cis.yaml");
    let example = example.to_str().expect("a UTF-8 path");
    let out = kubectl(server, &["apply", "-f", example]);
    assert_eq!(out.trim(), "globalreport.flowaudit.io/hourly-cis created", "{out}");
    let stored = kubectl_json(server, &["get", "globalreport", "hourly-cis"]);
    let written =
        NamedReport::load(&format!("{example}:hourly-cis"), Kind::CisBenchmark).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored["spec"], written.raw_spec, "the stored spec is not the file's");
    let typed: GlobalReport = serde_json::from_value(stored.clone()).unwrap_or_else(|e| panic!("{e}: {stored}"));
    assert_eq!(typed.spec, written.spec);
    assert_eq!(typed.status, None);
    let table = kubectl(server, &["get", "globalreports"]);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "TYPE", "SCHEDULE", "SUSPEND", "AGE"], "{table}");
    assert_eq!(rows[1][..6], ["hourly-cis", "cis-benchmark", "0", "*", "*", "*"], "{table}");
    eprintln!("kubectl get globalreports:\n{table}");

    // What the reporter will do: record a run in the status, as its service account.
    let status = serde_json::json!({
        "lastSuccessfulReportJobs": [{
            "start": "2026-11-01T00:00:00Z", "end": "2026-11-01T01:00:00Z",
            "jobCompletionTime": "2026-11-01T01:30:12Z",
        }],
        "lastScheduledReportJob": {"start": "2026-11-01T00:00:00Z", "end": "2026-11-01T01:00:00Z"},
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use kube::{
            Api, Client,
            api::{Patch, PatchParams},
            config::{Config, KubeConfigOptions, Kubeconfig},
        };
        let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("client config");
        config.auth_info.impersonate = Some(REPORTER.into());
        config.auth_info.impersonate_groups =
            Some(vec!["system:serviceaccounts".into(), "system:serviceaccounts:flowaudit".into()]);
        let api: Api<GlobalReport> = Api::all(Client::try_from(config).expect("client"));
        let patched = api
            .patch_status("hourly-cis", &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status})))
            .await
            .unwrap_or_else(|e| panic!("the reporter's status patch: {e}"));
        assert_eq!(serde_json::to_value(patched.status.expect("status")).unwrap(), status);
        let listed = api.list(&Default::default()).await.expect("the reporter lists GlobalReports");
        assert_eq!(listed.items.len(), 1);
        let refused = api
            .patch("hourly-cis", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})))
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403),
            "the reporter changed a spec: {refused:?}"
        );
    });
    let stored = kubectl_json(server, &["get", "globalreport", "hourly-cis"]);
    assert_eq!(stored["status"], status);
    assert_eq!(stored["spec"], written.raw_spec, "the status write changed the spec");

    // The schema is enforced: a threshold above 100 and a spec without a report type are
    // refused, with the field named.
    for (spec, field) in [
        ("{reportType: cis-benchmark, cis: {highThreshold: 101}}", "highThreshold"),
        ("{schedule: 0 * * * *}", "reportType"),
    ] {
        let doc = format!("apiVersion: flowaudit.io/v1\nkind: GlobalReport\nmetadata: {{name: bad}}\nspec: {spec}\n");
        let err = server
            .kubectl_stdin(&[REQUEST_TIMEOUT, "create", "-f", "-"], &doc)
            .expect_err("the server took a spec its schema refuses");
        assert!(err.to_string().contains(field), "{spec}: {err}");
    }
    eprintln!("GlobalReport: hourly-cis stored, read back, status written by the reporter");
}
