//! Exposure of a policy's allow rules: whether they let traffic in from (or out to) the
//! internet or other namespaces, as Calico's network-access report defines it (reference §3.3).
//!
//! Takes: one enforced policy of a state (Kubernetes, Calico, admin) and the state's network
//! sets. Gives: an [`Exposure`] per policy, for the directions the policy has. Must never: look at
//! rule order (a deny before an allow does not hide it, as in Calico) or at denied rules, or call
//! a CIDR private unless every address of it is.
//!
//! Rules, per allow rule of a direction the policy has (ingress reads the rule's source,
//! egress its destination):
//! - other namespace: an explicit namespace selector; no selector and no CIDR; for a
//!   GlobalNetworkPolicy, no CIDR. Kubernetes: no peers, or a peer with a `namespaceSelector`.
//!   Admin policies: every `namespaces` and `pods` peer (they name namespaces by selector).
//! - internet: no selector and no CIDR; a CIDR that is not private with no selector; a selector
//!   matching a network set holding a CIDR that is not private. Kubernetes: no peers, or an
//!   `ipBlock` that is not private. Admin policies: `networks` that are not private, and
//!   `domainNames`.
//! - Private: [`crate::model::is_private_ip`] for every address of the CIDR (RFC 1918, and for
//!   IPv6 fc00::/7 and fe80::/10, the flow log's `pvt`).

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;

use crate::{
    cluster::{
        AdminPolicy, BaselineAdminPolicy, CalicoPolicy, ClusterState, KubeNetworkPolicy, Labels,
        admin::{AdminAction, BaselineAction, EgressPeer, IngressPeer},
        calico::{Action, EntityRule},
        selector::{NamespaceLabels, Selector},
    },
    model::is_private_ip,
};

/// What a policy's allow rules expose, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exposure {
    /// Ingress from the internet.
    pub ingress_from_internet: bool,
    /// Egress to the internet.
    pub egress_to_internet: bool,
    /// Ingress from other namespaces.
    pub ingress_from_other_namespace: bool,
    /// Egress to other namespaces.
    pub egress_to_other_namespace: bool,
}

impl Exposure {
    /// Either's flags.
    pub fn or(self, other: Exposure) -> Exposure {
        Exposure {
            ingress_from_internet: self.ingress_from_internet || other.ingress_from_internet,
            egress_to_internet: self.egress_to_internet || other.egress_to_internet,
            ingress_from_other_namespace: self.ingress_from_other_namespace || other.ingress_from_other_namespace,
            egress_to_other_namespace: self.egress_to_other_namespace || other.egress_to_other_namespace,
        }
    }

    fn direction(ingress: bool, (internet, other): (bool, bool)) -> Exposure {
        if ingress {
            Exposure { ingress_from_internet: internet, ingress_from_other_namespace: other, ..Default::default() }
        } else {
            Exposure { egress_to_internet: internet, egress_to_other_namespace: other, ..Default::default() }
        }
    }
}

/// Whether every address of `net` is private.
pub fn is_private_net(net: &IpNet) -> bool {
    // A CIDR is aligned: if its first and last addresses are private, so is all of it (a block
    // spanning two private ranges would start at 0.0.0.0 or 128.0.0.0, which are not).
    is_private_ip(net.network()) && is_private_ip(net.broadcast())
}

/// A Kubernetes NetworkPolicy's exposure for the directions it has.
pub fn kube(policy: &KubeNetworkPolicy, ingress: bool, egress: bool) -> Exposure {
    let peers = |peers: Option<&Vec<NetworkPolicyPeer>>| -> (bool, bool) {
        let peers = peers.map(Vec::as_slice).unwrap_or_default();
        if peers.is_empty() {
            return (true, true);
        }
        let internet = peers
            .iter()
            .any(|p| p.ip_block.as_ref().is_some_and(|b| b.cidr.parse::<IpNet>().is_ok_and(|n| !is_private_net(&n))));
        (internet, peers.iter().any(|p| p.namespace_selector.is_some()))
    };
    let mut out = Exposure::default();
    if ingress {
        for rule in policy.spec.ingress.iter().flatten() {
            out = out.or(Exposure::direction(true, peers(rule.from.as_ref())));
        }
    }
    if egress {
        for rule in policy.spec.egress.iter().flatten() {
            out = out.or(Exposure::direction(false, peers(rule.to.as_ref())));
        }
    }
    out
}

/// A Calico (Global)NetworkPolicy's exposure for the directions it has, in `state` (a selector
/// matching a network set of it that holds a public CIDR exposes to the internet).
pub fn calico(policy: &CalicoPolicy, ingress: bool, egress: bool, state: &ClusterState) -> Exposure {
    let global = policy.kind.is_global();
    let entity = |e: &EntityRule| -> (bool, bool) {
        let has_selector = e.selector.is_some() || e.service_accounts.is_some() || e.services.is_some();
        let no_cidr = e.nets.is_empty();
        let bare = !has_selector && e.namespace_selector.is_none() && no_cidr;
        let other = e.namespace_selector.is_some() || bare || (global && no_cidr);
        let public_cidr = !has_selector && e.nets.iter().any(|n| !is_private_net(n));
        let public_set = e.selector.as_deref().is_some_and(|text| selects_public_set(policy, e, text, state));
        (bare || public_cidr || public_set, other)
    };
    let mut out = Exposure::default();
    if ingress {
        for rule in policy.spec.ingress.iter().filter(|r| r.action == Action::Allow) {
            out = out.or(Exposure::direction(true, entity(&rule.source)));
        }
    }
    if egress {
        for rule in policy.spec.egress.iter().filter(|r| r.action == Action::Allow) {
            out = out.or(Exposure::direction(false, entity(&rule.destination)));
        }
    }
    out
}

/// Whether a rule's `selector` picks a network set that holds a public CIDR. Scope as Calico's:
/// a namespaced policy's rule sees the sets of its namespace unless it has a
/// `namespaceSelector` (then the sets of the namespaces it selects; `global()`: global sets); a
/// GlobalNetworkPolicy's rule sees every set.
fn selects_public_set(policy: &CalicoPolicy, e: &EntityRule, text: &str, state: &ClusterState) -> bool {
    let Ok(selector) = Selector::parse(text) else { return false };
    let namespaces = e.namespace_selector.as_deref().and_then(|t| Selector::parse(t).ok());
    let empty = Labels::new();
    state.network_sets.iter().any(|set| {
        let in_scope = match (&namespaces, &set.namespace) {
            (Some(ns), None) => ns.is_global(),
            (Some(ns), Some(name)) => {
                let labels = state.namespaces.get(name).map_or(&empty, |n| &n.labels);
                !ns.is_global() && ns.matches(&NamespaceLabels { name, labels })
            }
            (None, set_ns) => policy.kind.is_global() || policy.namespace.as_ref() == set_ns.as_ref(),
        };
        in_scope && selector.matches(&set.labels) && set.nets.iter().any(|n| !is_private_net(n))
    })
}

/// An AdminNetworkPolicy's exposure (the directions it has rules for).
pub fn admin(policy: &AdminPolicy) -> Exposure {
    let ingress = policy.spec.ingress.iter().filter(|r| r.action == AdminAction::Allow).map(|r| ingress_peers(&r.from));
    let egress = policy.spec.egress.iter().filter(|r| r.action == AdminAction::Allow).map(|r| egress_peers(&r.to));
    ingress.chain(egress).fold(Exposure::default(), Exposure::or)
}

/// The BaselineAdminNetworkPolicy's exposure.
pub fn baseline(policy: &BaselineAdminPolicy) -> Exposure {
    let ingress =
        policy.spec.ingress.iter().filter(|r| r.action == BaselineAction::Allow).map(|r| ingress_peers(&r.from));
    let egress = policy.spec.egress.iter().filter(|r| r.action == BaselineAction::Allow).map(|r| egress_peers(&r.to));
    ingress.chain(egress).fold(Exposure::default(), Exposure::or)
}

fn ingress_peers(peers: &[IngressPeer]) -> Exposure {
    // Both forms name namespaces by selector: an explicit namespace selector.
    Exposure::direction(true, (false, !peers.is_empty()))
}

fn egress_peers(peers: &[EgressPeer]) -> Exposure {
    let internet = peers.iter().any(|p| match p {
        EgressPeer::Networks(nets) => nets.iter().any(|n| !is_private_net(n)),
        EgressPeer::DomainNames(names) => !names.is_empty(),
        _ => false,
    });
    let other = peers.iter().any(|p| matches!(p, EgressPeer::Namespaces(_) | EgressPeer::Pods(_)));
    Exposure::direction(false, (internet, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn private_cidrs_are_wholly_private() {
        for private in ["10.0.0.0/8", "10.1.2.3/32", "172.16.0.0/12", "192.168.4.0/24", "fd00::/8", "fe80::/64"] {
            assert!(is_private_net(&net(private)), "{private}");
        }
        for public in ["0.0.0.0/0", "8.8.8.8/32", "172.0.0.0/8", "10.0.0.0/7", "::/0", "2001:db8::/32", "127.0.0.0/8"] {
            assert!(!is_private_net(&net(public)), "{public}");
        }
    }
}
