//! crds/ holds exactly what the binary's `crd` subcommand prints.

use std::process::Command;

#[test]
fn checked_in_crds_match_the_crd_subcommand() {
    for name in [
        "databasebackups",
        "databaserestores",
        "databaserestoregrants",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dbbackup-operator"))
            .args(["crd", name])
            .output()
            .unwrap();
        assert!(out.status.success());
        let generated = String::from_utf8(out.stdout).unwrap();
        let path = format!("{}/crds/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let checked_in = std::fs::read_to_string(&path).unwrap();
        assert!(
            generated == checked_in,
            "crds/{name}.yaml is stale: run `make crds`"
        );
    }
}

#[test]
fn restore_crd_names_and_rules() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&dbbackup_operator::restore_crd_yaml()).unwrap();
    assert_eq!(crd["metadata"]["name"], "databaserestores.dbbackup.io");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "dbr");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"has(self.backup) != has(self.bucket)"),
        "{rules:?}"
    );
    assert!(rules.contains(&"self == oldSelf"), "{rules:?}");
}

#[test]
fn crd_names_and_columns() {
    let yaml = dbbackup_operator::crd_yaml();
    let crd: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(crd["metadata"]["name"], "databasebackups.dbbackup.io");
    let names = &crd["spec"]["names"];
    assert_eq!(names["kind"], "DatabaseBackup");
    assert_eq!(names["shortNames"][0], "dbb");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // The size only with -o wide.
    let size = &version["additionalPrinterColumns"][4];
    assert_eq!(
        (size["name"].as_str(), size["priority"].as_i64()),
        (Some("Size"), Some(1))
    );
    assert_eq!(
        columns,
        [
            "Engine",
            "Schedule",
            "Last Upload",
            "Uploaded",
            "Size",
            "Verified",
            "Ready",
            "Age"
        ]
    );
}

/// Every field carries a description, so that `kubectl explain` is useful.
#[test]
fn every_spec_field_is_described() {
    fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, child, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let crd: serde_json::Value = serde_yaml::from_str(&dbbackup_operator::crd_yaml()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
    let mut missing = vec![];
    walk("spec", spec, &mut missing);
    walk("status", status, &mut missing);
    assert!(
        missing.is_empty(),
        "fields without description: {missing:?}"
    );
}
