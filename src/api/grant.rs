//! The `DatabaseRestoreGrant` resource: the owner of a namespace lets
//! restores in other namespaces use some of its DatabaseBackups, in the
//! spirit of Gateway API's ReferenceGrant.

use super::common::cel;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbbackup.io",
    version = "v1alpha1",
    kind = "DatabaseRestoreGrant",
    plural = "databaserestoregrants",
    shortname = "dbrg",
    category = "backups",
    namespaced,
    derive = "PartialEq",
    doc = "Lets DatabaseRestores in other namespaces restore dumps of DatabaseBackups in this one. \
           Their pods get a time-limited URL of the one object chosen, never this namespace's credentials."
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRestoreGrantSpec {
    /// The namespaces whose DatabaseRestores may use the backups in `to`.
    #[schemars(length(min = 1, max = 64))]
    pub from: Vec<GrantFrom>,
    /// The DatabaseBackups of this namespace they may restore.
    #[schemars(length(min = 1, max = 64))]
    pub to: Vec<GrantTo>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantFrom {
    /// A namespace whose DatabaseRestores this grant admits.
    #[schemars(length(min = 1, max = 63))]
    #[schemars(extend("x-kubernetes-validations" = cel(&[(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "must be a namespace name (lowercase letters, digits and '-')"
    )])))]
    pub namespace: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantTo {
    /// The name of a DatabaseBackup in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub backup: String,
}

impl DatabaseRestoreGrant {
    /// Whether this grant lets restores in `namespace` use backup `backup`.
    pub fn allows(&self, namespace: &str, backup: &str) -> bool {
        self.spec.from.iter().any(|f| f.namespace == namespace)
            && self.spec.to.iter().any(|t| t.backup == backup)
    }
}

/// The grant CRD as generated.
pub fn grant_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    DatabaseRestoreGrant::crd()
}
