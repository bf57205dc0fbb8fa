//! The `BandwidthPolicy` custom resource (`podshaper.io/v1alpha1`): the
//! ceilings and bursts of the pods a label selector picks in the policy's
//! namespace, for the pods that do not set them in their own annotations.
//!
//! The CRD in `deploy/bandwidthpolicy-crd.yaml` is generated from these
//! types ([`crd_yaml`]); a unit test fails when the committed file differs
//! (`PODSHAPER_WRITE_CRD=1 cargo test -p podshaper-controller --lib crd`
//! rewrites it).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Defaults for the pods a selector picks in the policy's namespace. A
/// pod's own bandwidth annotations win over any policy, per field and
/// direction.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "podshaper.io",
    version = "v1alpha1",
    kind = "BandwidthPolicy",
    namespaced,
    status = "BandwidthPolicyStatus",
    shortname = "bwpolicy",
    doc = "Ceilings and bursts for the pods a label selector picks in the policy's namespace",
    printcolumn = r#"{"name":"Egress","type":"string","jsonPath":".spec.egressBandwidth"}"#,
    printcolumn = r#"{"name":"Ingress","type":"string","jsonPath":".spec.ingressBandwidth"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthPolicySpec {
    /// The pods of this namespace the policy applies to. Empty selects
    /// every pod in the namespace, as a NetworkPolicy's does.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Egress ceiling in bits per second, a quantity as the
    /// kubernetes.io/egress-bandwidth annotation takes it (10M, 1G; 1k to 1P).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_bandwidth: Option<String>,
    /// Ingress ceiling in bits per second, as kubernetes.io/ingress-bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_bandwidth: Option<String>,
    /// Egress burst in bytes, as podshaper.io/egress-burst (4Ki to 1Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<String>,
    /// Ingress burst in bytes, as podshaper.io/ingress-burst (4Ki to 1Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<String>,
}

/// What the controllers found, one entry per node, each written by that
/// node's controller (or, in cluster mode, by the acting replica).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BandwidthPolicyStatus {
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodePolicyStatus>,
}

/// One node's view of a policy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NodePolicyStatus {
    pub node: String,
    /// The names of the node's pods the policy selects.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Other policies that select the same pods with other values, and
    /// which value is in force.
    #[serde(default)]
    pub conflicts: Vec<String>,
    /// Values of this policy that cannot be used (field, value, bounds).
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The CRD as `deploy/` holds it.
pub fn crd() -> CustomResourceDefinition {
    BandwidthPolicy::crd()
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    Ok(format!(
        "# Generated from crates/controller/src/crd.rs; do not edit. Regenerate with\n\
         # PODSHAPER_WRITE_CRD=1 cargo test -p podshaper-controller --lib crd\n\
         {}",
        yaml_serde::to_string(&crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/bandwidthpolicy-crd.yaml"
    );

    #[test]
    fn the_committed_crd_is_generated_from_the_types() {
        let generated = crd_yaml().expect("the CRD serializes");
        if std::env::var_os("PODSHAPER_WRITE_CRD").is_some() {
            std::fs::write(COMMITTED, &generated).expect("write the CRD");
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "deploy/bandwidthpolicy-crd.yaml differs from the types in crd.rs: regenerate it with \
             PODSHAPER_WRITE_CRD=1 cargo test -p podshaper-controller --lib crd"
        );
    }

    #[test]
    fn the_status_nodes_are_a_map_keyed_by_node() {
        let crd = serde_json::to_value(crd()).expect("json");
        let nodes = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["status"]["properties"]["nodes"];
        assert_eq!(nodes["x-kubernetes-list-type"], "map", "{nodes}");
        assert_eq!(nodes["x-kubernetes-list-map-keys"][0], "node", "{nodes}");
        let required = &nodes["items"]["required"];
        assert!(
            required
                .as_array()
                .is_some_and(|r| r.iter().any(|k| k == "node")),
            "a list-map key must be required: {nodes}"
        );
    }
}
