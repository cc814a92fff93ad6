//! The conversion rules from Kubernetes objects (`k8s_openapi`) to the model, shared by every
//! source (`manifests`, `kube`), so a cluster read from files and the same cluster read from the
//! API give the same [`ClusterState`].
//!
//! Takes: typed objects. Gives: model objects, or every problem as a [`FieldError`] (field path
//! such as `status.podIPs[0].ip`, reason); the source adds where the object came from (file and
//! document, or kind and namespace/name). Also [`Convert::trim`]: drops what the conversion does
//! not read, so a cache of the whole cluster holds only the fields used. Must never: guess a
//! value it cannot parse.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{core::v1 as core, networking::v1 as networking},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    ClusterState, KubeNetworkPolicy, Labels, NamedPort, Namespace, Node, Pod, Service, ServiceAccount, ServicePort,
};

/// Annotation naming a pod's cgroup (relative to the cgroup v2 root).
pub const CGROUP_ANNOTATION: &str = "flowaudit.io/cgroup";

pub use super::FieldError;

/// A Kubernetes kind the model reads.
pub trait Convert {
    /// The model type.
    type Model;
    /// The kind as reports and logs name it (`Pod`, `NetworkPolicy.networking.k8s.io/v1`).
    const KIND: &'static str;
    /// Whether objects of the kind live in a namespace.
    const NAMESPACED: bool;
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// The model object, or every problem found.
    fn convert(&self) -> Result<Self::Model, Vec<FieldError>>;
    /// Drops every field [`Convert::convert`] does not read (converting the result gives the
    /// same model object).
    fn trim(&mut self);
    /// Adds a converted object to `state` (unsorted; see [`sort`]).
    fn add(model: Self::Model, state: &mut ClusterState);
}

/// `(namespace, name)` of an object: `namespace` is empty for cluster-scoped kinds and
/// `default` when a namespaced object does not say.
pub fn object_name(meta: &ObjectMeta, namespaced: bool) -> Result<(String, String), FieldError> {
    let name =
        meta.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| FieldError::new("metadata.name", "required"))?;
    let namespace = if namespaced {
        meta.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    Ok((namespace, name))
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// Metadata with only what the conversions read: name, namespace, uid, generateName, labels,
/// resourceVersion (for logs) and the `flowaudit.io/cgroup` annotation.
fn trim_meta(meta: &mut ObjectMeta) {
    let annotations = meta
        .annotations
        .take()
        .map(|a| a.into_iter().filter(|(k, _)| k == CGROUP_ANNOTATION).collect::<BTreeMap<_, _>>())
        .filter(|a| !a.is_empty());
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        generate_name: meta.generate_name.take(),
        labels: meta.labels.take(),
        resource_version: meta.resource_version.take(),
        annotations,
        ..ObjectMeta::default()
    };
}

fn parse_ip(text: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(FieldError::new(field, format!("{text:?} is not an IP address")));
            None
        }
    }
}

fn done<T>(model: T, errors: Vec<FieldError>) -> Result<T, Vec<FieldError>> {
    if errors.is_empty() { Ok(model) } else { Err(errors) }
}

impl Convert for core::Namespace {
    type Model = Namespace;
    const KIND: &'static str = "Namespace";
    const NAMESPACED: bool = false;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn convert(&self) -> Result<Namespace, Vec<FieldError>> {
        let (_, name) = object_name(&self.metadata, false).map_err(|e| vec![e])?;
        Ok(Namespace { name, labels: labels(&self.metadata) })
    }

    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.spec = None;
        self.status = None;
    }

    fn add(model: Namespace, state: &mut ClusterState) {
        state.namespaces.insert(model.name.clone(), model);
    }
}

impl Convert for core::Pod {
    type Model = Pod;
    const KIND: &'static str = "Pod";
    const NAMESPACED: bool = true;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn convert(&self) -> Result<Pod, Vec<FieldError>> {
        let (namespace, name) = object_name(&self.metadata, true).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let mut ips = Vec::new();
        match status.and_then(|s| s.pod_ips.as_ref()).filter(|v| !v.is_empty()) {
            Some(list) => {
                for (i, ip) in list.iter().enumerate() {
                    ips.extend(parse_ip(&ip.ip, &format!("status.podIPs[{i}].ip"), &mut errors));
                }
            }
            None => {
                if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).filter(|s| !s.is_empty()) {
                    ips.extend(parse_ip(ip, "status.podIP", &mut errors));
                }
            }
        }
        let mut named_ports = Vec::new();
        for (c, container) in spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
            for (p, port) in container.ports.iter().flatten().enumerate() {
                let Some(port_name) = &port.name else { continue };
                match u16::try_from(port.container_port) {
                    Ok(n) if n > 0 => named_ports.push(NamedPort {
                        name: port_name.clone(),
                        port: n,
                        protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    }),
                    _ => errors.push(FieldError::new(
                        format!("spec.containers[{c}].ports[{p}].containerPort"),
                        format!("{} is not a port (1-65535)", port.container_port),
                    )),
                }
            }
        }
        let pod = Pod {
            namespace,
            name,
            uid: self.metadata.uid.clone().unwrap_or_default(),
            labels: labels(&self.metadata),
            generate_name: self.metadata.generate_name.clone().filter(|g| !g.is_empty()),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            node_name: spec.and_then(|s| s.node_name.clone()),
            service_account: spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
            named_ports,
            cgroup: self.metadata.annotations.as_ref().and_then(|a| a.get(CGROUP_ANNOTATION)).cloned(),
        };
        done(pod, errors)
    }

    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.spec = self.spec.take().map(|s| core::PodSpec {
            containers: s
                .containers
                .into_iter()
                .map(|c| core::Container {
                    name: c.name,
                    // Unnamed ports too: field paths in problems keep their indexes.
                    ports: c.ports.map(|ports| {
                        ports
                            .into_iter()
                            .map(|p| core::ContainerPort {
                                name: p.name,
                                container_port: p.container_port,
                                protocol: p.protocol,
                                ..Default::default()
                            })
                            .collect()
                    }),
                    ..Default::default()
                })
                .collect(),
            host_network: s.host_network,
            node_name: s.node_name,
            service_account_name: s.service_account_name,
            ..Default::default()
        });
        self.status =
            self.status.take().map(|s| core::PodStatus { pod_ip: s.pod_ip, pod_ips: s.pod_ips, ..Default::default() });
    }

    fn add(model: Pod, state: &mut ClusterState) {
        state.pods.push(model);
    }
}

impl Convert for core::Service {
    type Model = Service;
    const KIND: &'static str = "Service";
    const NAMESPACED: bool = true;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn convert(&self) -> Result<Service, Vec<FieldError>> {
        let (namespace, name) = object_name(&self.metadata, true).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let spec = self.spec.clone().unwrap_or_default();
        let mut cluster_ips = Vec::new();
        let (list, field) = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
            Some(v) => (v.clone(), "spec.clusterIPs"),
            None => (spec.cluster_ip.iter().cloned().collect(), "spec.clusterIP"),
        };
        for (i, ip) in list.iter().enumerate() {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            let f = if field == "spec.clusterIPs" { format!("{field}[{i}]") } else { field.to_owned() };
            cluster_ips.extend(parse_ip(ip, &f, &mut errors));
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            match u16::try_from(p.port) {
                Ok(n) if n > 0 => ports.push(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: n,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                }),
                _ => errors.push(FieldError::new(
                    format!("spec.ports[{i}].port"),
                    format!("{} is not a port (1-65535)", p.port),
                )),
            }
        }
        done(Service { namespace, name, cluster_ips, ports, selector: spec.selector.unwrap_or_default() }, errors)
    }

    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.spec = self.spec.take().map(|s| core::ServiceSpec {
            cluster_ip: s.cluster_ip,
            cluster_ips: s.cluster_ips,
            ports: s.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| core::ServicePort {
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol,
                        ..Default::default()
                    })
                    .collect()
            }),
            selector: s.selector,
            ..Default::default()
        });
        self.status = None;
    }

    fn add(model: Service, state: &mut ClusterState) {
        state.services.push(model);
    }
}

impl Convert for core::Node {
    type Model = Node;
    const KIND: &'static str = "Node";
    const NAMESPACED: bool = false;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn convert(&self) -> Result<Node, Vec<FieldError>> {
        let (_, name) = object_name(&self.metadata, false).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut addresses = Vec::new();
        for (i, a) in self.status.iter().flat_map(|s| s.addresses.iter().flatten()).enumerate() {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                addresses.extend(parse_ip(&a.address, &format!("status.addresses[{i}].address"), &mut errors));
            }
        }
        done(Node { name, labels: labels(&self.metadata), addresses }, errors)
    }

    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.spec = None;
        // Every address is kept (not only IPs): field paths keep their indexes.
        self.status = self.status.take().map(|s| core::NodeStatus { addresses: s.addresses, ..Default::default() });
    }

    fn add(model: Node, state: &mut ClusterState) {
        state.nodes.push(model);
    }
}

impl Convert for core::ServiceAccount {
    type Model = ServiceAccount;
    const KIND: &'static str = "ServiceAccount";
    const NAMESPACED: bool = true;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn convert(&self) -> Result<ServiceAccount, Vec<FieldError>> {
        let (namespace, name) = object_name(&self.metadata, true).map_err(|e| vec![e])?;
        Ok(ServiceAccount { namespace, name, labels: labels(&self.metadata) })
    }

    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.secrets = None;
        self.image_pull_secrets = None;
        self.automount_service_account_token = None;
    }

    fn add(model: ServiceAccount, state: &mut ClusterState) {
        state.service_accounts.push(model);
    }
}

impl Convert for networking::NetworkPolicy {
    type Model = KubeNetworkPolicy;
    const KIND: &'static str = "NetworkPolicy.networking.k8s.io/v1";
    const NAMESPACED: bool = true;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn convert(&self) -> Result<KubeNetworkPolicy, Vec<FieldError>> {
        let (namespace, name) = object_name(&self.metadata, true).map_err(|e| vec![e])?;
        Ok(KubeNetworkPolicy { namespace, name, spec: self.spec.clone().unwrap_or_default() })
    }

    /// The whole policy stays (it is small, and the audit log shows it): only managed fields and
    /// the last-applied copy go.
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(annotations) = self.metadata.annotations.as_mut() {
            annotations.remove(super::LAST_APPLIED);
        }
        if self.metadata.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            self.metadata.annotations = None;
        }
    }

    fn add(model: KubeNetworkPolicy, state: &mut ClusterState) {
        state.network_policies.push(model);
    }
}

/// Puts every list of `state` in its documented order (namespace, then name).
pub fn sort(state: &mut ClusterState) {
    state.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    state.services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    state.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    state.service_accounts.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    state.network_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_yaml_ng::from_str(text).unwrap()
    }

    /// Trimming keeps exactly what conversion reads, and removes the bulk (managed fields,
    /// last-applied annotations, container details, conditions).
    #[test]
    fn trimmed_objects_convert_to_the_same_model() {
        let mut pod: core::Pod = yaml(
            r#"
metadata:
  name: web-1
  namespace: shop
  uid: u-1
  generateName: web-
  resourceVersion: "42"
  labels: {app: web}
  annotations: {flowaudit.io/cgroup: lab/p1, kubectl.kubernetes.io/last-applied-configuration: "{...}"}
  managedFields: [{manager: kubectl, operation: Apply}]
spec:
  serviceAccountName: web-sa
  nodeName: node-a
  hostNetwork: true
  containers:
  - name: c
    image: nginx
    env: [{name: A, value: b}]
    ports: [{name: http, containerPort: 8080, protocol: UDP}, {containerPort: 9090}]
status:
  phase: Running
  conditions: [{type: Ready, status: "True"}]
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
"#,
        );
        let before = pod.convert().unwrap();
        pod.trim();
        assert_eq!(pod.convert().unwrap(), before);
        assert_eq!(before.ips.len(), 2);
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
        assert!(pod.spec.as_ref().unwrap().containers[0].image.is_none());
        assert!(pod.spec.as_ref().unwrap().containers[0].env.is_none());
        assert!(pod.status.as_ref().unwrap().conditions.is_none());

        let mut svc: core::Service = yaml(
            "metadata: {name: s, namespace: shop}\nspec: {clusterIPs: [10.96.0.1], selector: {app: web}, \
             ports: [{name: http, port: 80, targetPort: 8080}], sessionAffinity: None}\n",
        );
        let before = svc.convert().unwrap();
        svc.trim();
        assert_eq!(svc.convert().unwrap(), before);

        let mut node: core::Node = yaml(
            "metadata: {name: n, labels: {zone: a}}\nspec: {podCIDR: 10.244.0.0/24}\n\
             status: {addresses: [{type: Hostname, address: n}, {type: InternalIP, address: 192.168.0.1}], capacity: {cpu: '2'}}\n",
        );
        let before = node.convert().unwrap();
        node.trim();
        assert_eq!(node.convert().unwrap(), before);
        assert_eq!(before.addresses, vec!["192.168.0.1".parse::<IpAddr>().unwrap()]);

        let mut np: networking::NetworkPolicy = yaml(
            "metadata: {name: deny, namespace: shop, managedFields: [{manager: x}]}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
        );
        let before = np.convert().unwrap();
        np.trim();
        assert_eq!(np.convert().unwrap(), before);
    }

    #[test]
    fn every_field_problem_is_returned() {
        let pod: core::Pod = yaml(
            "metadata: {name: p}\nspec: {containers: [{name: c, ports: [{name: x, containerPort: 0}]}]}\n\
             status: {podIPs: [{ip: 1.2.3}, {ip: '::1'}, {ip: nope}]}\n",
        );
        let errors = pod.convert().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["status.podIPs[0].ip", "status.podIPs[2].ip", "spec.containers[0].ports[0].containerPort"]);
        assert_eq!(errors[0].to_string(), "status.podIPs[0].ip: \"1.2.3\" is not an IP address");
        let nameless: core::Namespace = yaml("metadata: {labels: {a: b}}\n");
        assert_eq!(nameless.convert().unwrap_err(), vec![FieldError::new("metadata.name", "required")]);
        let default_ns: core::ServiceAccount = yaml("metadata: {name: sa}\n");
        assert_eq!(default_ns.convert().unwrap().namespace, "default");
    }
}
