//! attribute: the policy engine that attributes flows to Calico network policies
//! (in progress: the selector language).
//!
//! Takes: Calico policy resources and the labels of flow endpoints. Gives: which policies and
//! rules select an endpoint. So far only [`selector`] exists: Calico's label selector language.

pub mod selector;
