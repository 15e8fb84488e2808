//! The built-in kinds the agent knows without asking the API server (from k8s-openapi), with
//! whether each lives in a namespace.

use k8s_openapi::api::{apps, autoscaling, batch, core, networking, policy, rbac};
use kube::core::ApiResource;

macro_rules! table {
    ($api_version:expr, $kind:expr; $($ty:ty => $namespaced:expr),* $(,)?) => {
        $(
            if $api_version == <$ty as k8s_openapi::Resource>::API_VERSION
                && $kind == <$ty as k8s_openapi::Resource>::KIND
            {
                return Some((ApiResource::erase::<$ty>(&()), $namespaced));
            }
        )*
    };
}

/// The API resource of a well-known kind and whether it is namespaced.
pub fn known(api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
    table!(api_version, kind;
        core::v1::Namespace => false,
        core::v1::ConfigMap => true,
        core::v1::Secret => true,
        core::v1::Service => true,
        core::v1::ServiceAccount => true,
        core::v1::PersistentVolumeClaim => true,
        core::v1::PersistentVolume => false,
        core::v1::Pod => true,
        core::v1::ResourceQuota => true,
        core::v1::LimitRange => true,
        apps::v1::Deployment => true,
        apps::v1::StatefulSet => true,
        apps::v1::DaemonSet => true,
        apps::v1::ReplicaSet => true,
        batch::v1::Job => true,
        batch::v1::CronJob => true,
        networking::v1::Ingress => true,
        networking::v1::IngressClass => false,
        networking::v1::NetworkPolicy => true,
        policy::v1::PodDisruptionBudget => true,
        autoscaling::v2::HorizontalPodAutoscaler => true,
        rbac::v1::Role => true,
        rbac::v1::RoleBinding => true,
        rbac::v1::ClusterRole => false,
        rbac::v1::ClusterRoleBinding => false,
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_kinds_resolve_to_their_plural_and_scope() {
        let (ar, namespaced) = known("apps/v1", "Deployment").expect("deployment");
        assert_eq!(
            (ar.group.as_str(), ar.plural.as_str(), namespaced),
            ("apps", "deployments", true)
        );
        let (ar, namespaced) = known("v1", "Namespace").expect("namespace");
        assert_eq!((ar.plural.as_str(), namespaced), ("namespaces", false));
        assert!(known("cert-manager.io/v1", "ClusterIssuer").is_none());
        assert!(known("apps/v1beta1", "Deployment").is_none());
    }
}
