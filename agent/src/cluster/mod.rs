//! cluster: the read-only model of the cluster state, a side input of enrich and attribute.
//!
//! Takes: objects from a source (`manifests`: a directory of Kubernetes YAML/JSON; `kube`: the
//! Kubernetes API through reflectors), converted by the same rules (`convert`). Gives: an immutable [`ClusterState`] snapshot per version, trimmed to the
//! fields flowaudit uses. Must never: sit in the flow path, or change while a stage reads it
//! (stages hold an `Arc` of one version; a change builds a new one).

pub mod convert;
pub mod kube;
pub mod manifests;

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::networking::v1::NetworkPolicySpec;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A Namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
}

/// A container port with a name (the target of named ports in policies and Services).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// Port name.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// A Pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid` (names the pod's kubepods cgroup).
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// `metadata.generateName`: the prefix of generated names (the aggregated name is it + `*`).
    pub generate_name: Option<String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// Named container ports.
    pub named_ports: Vec<NamedPort>,
    /// `flowaudit.io/cgroup` annotation: the pod's cgroup, relative to the cgroup v2 root.
    pub cgroup: Option<String>,
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (may be empty for a single-port Service).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without `None`.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`.
    pub selector: Labels,
}

/// A Node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `status.addresses` that are IPs.
    pub addresses: Vec<IpAddr>,
}

/// A ServiceAccount.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
}

/// A Kubernetes `networking.k8s.io/v1` NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeNetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec, as Kubernetes defines it.
    pub spec: NetworkPolicySpec,
}

/// One version of the cluster state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    /// Increases with every change.
    pub version: u64,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods, sorted by namespace and name.
    pub pods: Vec<Pod>,
    /// Services, sorted by namespace and name.
    pub services: Vec<Service>,
    /// Nodes, sorted by name.
    pub nodes: Vec<Node>,
    /// ServiceAccounts, sorted by namespace and name.
    pub service_accounts: Vec<ServiceAccount>,
    /// Kubernetes NetworkPolicies, sorted by namespace and name.
    pub network_policies: Vec<KubeNetworkPolicy>,
}

impl ClusterState {
    /// Object counts per kind, for `flowaudit check`.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("Namespace", self.namespaces.len()),
            ("Pod", self.pods.len()),
            ("Service", self.services.len()),
            ("Node", self.nodes.len()),
            ("ServiceAccount", self.service_accounts.len()),
            ("NetworkPolicy.networking.k8s.io/v1", self.network_policies.len()),
        ]
    }
}
