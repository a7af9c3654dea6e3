//! The Helm chart, the examples and the scripts, against the real apiserver
//! with the real helm and kubectl.

mod support;

#[path = "chart/lint.rs"]
mod lint;

use dbbackup_operator::api::DatabaseBackup;
use kube::api::Api;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::k8s::*;
use support::operator::*;
use support::process::{ServerProcess, free_port, http_get};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dbbackup-operator");
const RELEASE_NS: &str = "dbbackup-system";
/// The ServiceAccount the chart creates for release "dbb".
const SA: &str = "dbb-dbbackup-operator";

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn helm_lint_strict_passes() {
    let out = output(Command::new(bin("helm")).args(["lint", "--strict", CHART]));
    assert!(out.status.success(), "{}", text(&out));
}

/// The chart rendered by the real helm with `--set` values.
fn helm_template(sets: &[&str]) -> String {
    let mut helm = Command::new(bin("helm"));
    helm.args(["template", "dbb", CHART, "-n", RELEASE_NS]);
    for s in sets {
        helm.args(["--set", s]);
    }
    let out = output(&mut helm);
    assert!(out.status.success(), "helm template: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A digest that pins the image.
const DIGEST_SET: &str =
    "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A digest pins the operator's image and the one its Jobs run; a
/// PriorityClass reaches the operator's pods.
#[test]
fn a_digest_pins_every_image_and_a_priority_class_is_set() {
    let rendered = helm_template(&[DIGEST_SET, "priorityClassName=system-cluster-critical"]);
    let pinned = "ghcr.io/dbbackup-operator/dbbackup-operator@sha256:0123456789abcdef";
    assert_eq!(rendered.matches(pinned).count(), 2, "{rendered}");
    assert!(!rendered.contains("dbbackup-operator:"), "{rendered}");
    assert!(
        rendered.contains("priorityClassName: \"system-cluster-critical\""),
        "{rendered}"
    );
    let plain = helm_template(&[]);
    assert!(
        !plain.contains("priorityClassName") && !plain.contains('@'),
        "{plain}"
    );
}

/// The rendered document of `kind`, if any.
fn rendered_kind(rendered: &str, kind: &str) -> Option<serde_json::Value> {
    let doc = rendered
        .split("\n---")
        .find(|d| d.contains(&format!("\nkind: {kind}\n")))?;
    Some(serde_yaml::from_str(doc).unwrap())
}

/// Above one replica the operator's pods prefer different nodes and a
/// PodDisruptionBudget lets a drain take one at a time; one replica has
/// neither (a budget would block every drain), and both can be turned off.
#[test]
fn two_replicas_prefer_two_nodes_and_a_drain_takes_one_at_a_time() {
    let two = helm_template(&["replicas=2"]);
    let deployment = rendered_kind(&two, "Deployment").unwrap();
    let affinity = &deployment["spec"]["template"]["spec"]["affinity"];
    let term = &affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        term["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let budget = rendered_kind(&two, "PodDisruptionBudget").unwrap();
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(budget["spec"]["selector"], deployment["spec"]["selector"]);

    let one = helm_template(&[]);
    assert!(rendered_kind(&one, "PodDisruptionBudget").is_none());
    let deployment = rendered_kind(&one, "Deployment").unwrap();
    assert!(deployment["spec"]["template"]["spec"]["affinity"].is_null());

    let off = helm_template(&[
        "replicas=2",
        "spreadAcrossNodes=false",
        "podDisruptionBudget.enabled=false",
    ]);
    assert!(rendered_kind(&off, "PodDisruptionBudget").is_none());
    let deployment = rendered_kind(&off, "Deployment").unwrap();
    assert!(deployment["spec"]["template"]["spec"]["affinity"].is_null());
    // The user's own affinity replaces ours.
    let own = helm_template(&["replicas=2", "affinity.nodeAffinity.x=1"]);
    let deployment = rendered_kind(&own, "Deployment").unwrap();
    assert!(deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_null());
}

/// The Deployment's update strategy type as rendered ("" for the default,
/// RollingUpdate).
fn strategy(rendered: &str) -> String {
    let doc = rendered
        .split("\n---")
        .find(|d| d.contains("\nkind: Deployment"))
        .expect("a Deployment");
    let deployment: serde_json::Value = serde_yaml::from_str(doc).unwrap();
    deployment["spec"]["strategy"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A single replica without leader election is replaced by stopping it
/// first: a rolling update would run two operators at once. With leader
/// election (enabled, or implied by replicas > 1) the rolling update stays.
#[test]
fn without_leader_election_an_upgrade_never_runs_two_operators() {
    assert_eq!(strategy(&helm_template(&[])), "Recreate");
    assert_eq!(
        strategy(&helm_template(&["leaderElection.enabled=true"])),
        ""
    );
    assert_eq!(strategy(&helm_template(&["replicas=2"])), "");
}

#[test]
fn chart_ships_the_generated_crd() {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in [
        "databasebackups",
        "databaserestores",
        "databaserestoregrants",
    ] {
        let top = std::fs::read_to_string(format!("{root}/crds/{name}.yaml")).unwrap();
        let chart = std::fs::read_to_string(format!("{CHART}/crds/{name}.yaml")).unwrap();
        assert!(
            top == chart,
            "charts/dbbackup-operator/crds/{name}.yaml is stale: run `make crds`"
        );
    }
}

/// Minimal stand-ins for the Prometheus Operator's CRDs, so that ServiceMonitor
/// and PrometheusRule objects can be validated by the apiserver.
fn monitoring_crds() -> String {
    ["ServiceMonitor", "PrometheusRule"]
        .map(|kind| {
            let singular = kind.to_lowercase();
            format!(
                r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {singular}s.monitoring.coreos.com}}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{kind: {kind}, plural: {singular}s, singular: {singular}, listKind: {kind}List}}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"#
            )
        })
        .join("---\n")
}

fn kubectl_stdin(cp: &ControlPlane, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = cp
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

async fn cluster() -> ControlPlane {
    setup_with(Default::default(), &[RELEASE_NS, "shop"])
        .await
        .0
}

#[tokio::test]
async fn helm_template_applies_cleanly_with_each_documented_switch() {
    let cp = cluster().await;
    let out = kubectl_stdin(&cp, &["apply", "-f", "-"], &monitoring_crds());
    assert!(out.status.success(), "{}", text(&out));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let switches: &[&[&str]] = &[
        &[],
        &["watchNamespace=shop"],
        &["replicas=2"],
        &["replicas=3,spreadAcrossNodes=false,podDisruptionBudget.enabled=false"],
        &["leaderElection.enabled=true,leaderElection.leaseDurationSeconds=30"],
        &["metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true"],
        &["metrics.dashboard.enabled=true"],
        &["metrics.service.enabled=false"],
        &["serviceAccount.create=false,serviceAccount.name=existing"],
        &["logFormat=text,image.tag=1.2.3,image.pullPolicy=Always"],
        &["priorityClassName=system-cluster-critical"],
        &[DIGEST_SET],
    ];
    for set in switches {
        let mut helm = cp.helm();
        helm.args(["template", "dbb", CHART, "-n", RELEASE_NS]);
        for s in *set {
            helm.args(["--set", s]);
        }
        let rendered = output(&mut helm);
        assert!(rendered.status.success(), "{set:?}: {}", text(&rendered));
        let manifest = String::from_utf8(rendered.stdout).unwrap();
        let out = kubectl_stdin(&cp, &["apply", "--dry-run=server", "-f", "-"], &manifest);
        let all = text(&out);
        assert!(out.status.success(), "{set:?}: {all}");
        assert!(!all.contains("Warning"), "{set:?} warns: {all}");
        if set
            .iter()
            .any(|s| s.contains("replicas=2") || s.contains("leaderElection.enabled=true"))
        {
            assert!(manifest.contains("--leader-election"), "{set:?}");
            assert!(manifest.contains("coordination.k8s.io"), "{set:?}");
        }
        if set.iter().any(|s| s.contains("watchNamespace")) {
            assert!(
                !manifest.contains(
                    "kind: ClusterRoleBinding\nmetadata:\n  name: dbb-dbbackup-operator\n"
                )
            );
            assert!(manifest.contains("kind: RoleBinding"));
        }
    }
}

fn helm_install(cp: &ControlPlane, verb: &str, extra: &[&str]) {
    let out = output(
        cp.helm()
            .args([verb, "dbb", CHART, "-n", RELEASE_NS])
            .args(["--set", "image.repository=registry.test/dbbackup-operator"])
            .args(extra),
    );
    assert!(out.status.success(), "helm {verb}: {}", text(&out));
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let out = output(cp.kubectl().args(args));
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn helm_install_and_upgrade_create_the_expected_objects() {
    let cp = cluster().await;
    helm_install(&cp, "install", &[]);
    let ns = ["-n", RELEASE_NS];
    for (kind, name) in [
        ("deployment", "dbb-dbbackup-operator"),
        ("serviceaccount", SA),
        ("service", "dbb-dbbackup-operator-metrics"),
        ("clusterrole", "dbb-dbbackup-operator"),
        ("clusterrolebinding", "dbb-dbbackup-operator"),
        ("clusterrole", "dbb-dbbackup-operator-cluster-reads"),
    ] {
        kubectl_ok(&cp, &[&["get", kind, name][..], &ns[..]].concat());
    }
    let args = kubectl_ok(
        &cp,
        &[
            &[
                "get",
                "deployment",
                "dbb-dbbackup-operator",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].args}",
            ][..],
            &ns[..],
        ]
        .concat(),
    );
    assert!(!args.contains("--leader-election"), "{args}");
    kubectl_ok(&cp, &["get", "crd", "databasebackups.dbbackup.io"]);

    helm_install(&cp, "upgrade", &["--set", "replicas=2"]);
    let deploy = kubectl_ok(
        &cp,
        &[
            &[
                "get",
                "deployment",
                "dbb-dbbackup-operator",
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args}",
            ][..],
            &ns[..],
        ]
        .concat(),
    );
    assert!(
        deploy.starts_with("2 ") && deploy.contains("--leader-election"),
        "{deploy}"
    );
    kubectl_ok(
        &cp,
        &[
            &["get", "role", "dbb-dbbackup-operator-leader-election"][..],
            &ns[..],
        ]
        .concat(),
    );
}

fn can_i(cp: &ControlPlane, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{RELEASE_NS}:{SA}");
    let out = output(cp.kubectl().args(["auth", "can-i"]).args(args).arg(&who));
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {args:?}: {other} {}", text(&out)),
    }
}

#[tokio::test]
async fn rbac_allows_exactly_what_the_controller_needs() {
    let cp = cluster().await;
    helm_install(&cp, "install", &["--set", "replicas=2"]);
    let allowed: &[&[&str]] = &[
        &["get", "databasebackups.dbbackup.io", "-n", "shop"],
        &["list", "databasebackups.dbbackup.io", "-A"],
        &["watch", "databasebackups.dbbackup.io", "-A"],
        &[
            "patch",
            "databasebackups.dbbackup.io",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &["watch", "databaserestores.dbbackup.io", "-A"],
        &[
            "patch",
            "databaserestores.dbbackup.io",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &["list", "databaserestoregrants.dbbackup.io", "-n", "shop"],
        &["create", "cronjobs.batch", "-n", "shop"],
        &["patch", "cronjobs.batch", "-n", "shop"],
        &["watch", "cronjobs.batch", "-A"],
        &["create", "jobs.batch", "-n", "shop"],
        &["watch", "jobs.batch", "-A"],
        &["create", "persistentvolumeclaims", "-n", "shop"],
        &["patch", "persistentvolumeclaims", "-n", "shop"],
        &["list", "pods", "-A"],
        &["watch", "pods", "-A"],
        &["get", "secrets", "-n", "shop"],
        &["create", "events.events.k8s.io", "-n", "shop"],
        &["watch", "events", "-A"],
        &["watch", "limitranges", "-A"],
        &["get", "storageclasses.storage.k8s.io"],
        &["get", "persistentvolumes"],
        &["get", "nodes"],
        &["update", "leases.coordination.k8s.io", "-n", RELEASE_NS],
    ];
    let denied: &[&[&str]] = &[
        &["list", "secrets", "-A"],
        &["watch", "secrets", "-A"],
        &["list", "secrets", "-n", "shop"],
        &["create", "secrets", "-n", "shop"],
        &["create", "pods", "--subresource=exec", "-n", "shop"],
        &["create", "pods", "-n", "shop"],
        &["delete", "pods", "-n", "shop"],
        &["delete", "cronjobs.batch", "-n", "shop"],
        &["delete", "jobs.batch", "-n", "shop"],
        &["delete", "persistentvolumeclaims", "-n", "shop"],
        &["patch", "databasebackups.dbbackup.io", "-n", "shop"],
        &["delete", "databasebackups.dbbackup.io", "-n", "shop"],
        &["patch", "databaserestores.dbbackup.io", "-n", "shop"],
        &["create", "databaserestoregrants.dbbackup.io", "-n", "shop"],
        &["create", "configmaps", "-n", "shop"],
        &["delete", "events", "-n", "shop"],
        &["create", "limitranges", "-n", "shop"],
        &["patch", "deployments.apps", "-n", RELEASE_NS],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["update", "leases.coordination.k8s.io", "-n", "shop"],
    ];
    for a in allowed {
        assert!(can_i(&cp, a), "should be allowed: {a:?}");
    }
    for d in denied {
        assert!(!can_i(&cp, d), "should be denied: {d:?}");
    }

    // Watching one namespace: namespaced rights there, none elsewhere.
    helm_install(&cp, "upgrade", &["--set", "watchNamespace=shop"]);
    assert!(can_i(&cp, &["get", "secrets", "-n", "shop"]));
    assert!(can_i(&cp, &["create", "cronjobs.batch", "-n", "shop"]));
    assert!(!can_i(&cp, &["get", "secrets", "-n", "default"]));
    assert!(!can_i(&cp, &["list", "pods", "-A"]));
}

#[tokio::test]
async fn the_operator_with_the_charts_service_account_reconciles() {
    let cp = cluster().await;
    helm_install(&cp, "install", &["--set", "replicas=2"]);
    let client = cp.client().await;
    create_sample_secrets(&client, "shop").await;
    create_backup(&client, "shop", backup_manifest("orders", "postgres")).await;

    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbbackup-operator"));
    cmd.args([
        "run",
        "--log-format=json",
        "--leader-election",
        "--lease-namespace",
        RELEASE_NS,
    ])
    .arg(format!("--listen=127.0.0.1:{port}"))
    .env_clear()
    .env("KUBECONFIG", token_kubeconfig(&cp, RELEASE_NS, SA))
    .env("POD_NAME", "operator-0")
    .env("DBBACKUP_UPLOADER_IMAGE", UPLOADER_IMAGE);
    let log_dir = tempfile::tempdir().unwrap();
    let mut operator = ServerProcess::spawn("operator", cmd, log_dir.path(), libc::SIGTERM);

    let backups: Api<DatabaseBackup> = Api::namespaced(client.clone(), "shop");
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        wait_ready(&backups, "orders", "True", "Reconciled"),
    )
    .await;
    operator.assert_running();
    assert!(
        outcome.is_ok(),
        "not reconciled; operator log:\n{}",
        operator.log_tail()
    );
    assert!(
        !operator.log_tail().contains("forbidden"),
        "a call was forbidden:\n{}",
        operator.log_tail()
    );
    kubectl_ok(
        &cp,
        &[
            "get",
            "cronjob",
            "orders-dump",
            "orders-upload",
            "-n",
            "shop",
        ],
    );
    kubectl_ok(
        &cp,
        &["get", "lease", "dbbackup-operator", "-n", RELEASE_NS],
    );

    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("dbbackup_reconciles_total"), "{metrics}");
    assert!(metrics.contains("dbbackup_backup_stale"), "{metrics}");
    // JSON logs, one object per line.
    let first = operator
        .log_tail()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_ok(),
        "{first}"
    );
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            if !p.ends_with("target") && !p.ends_with(".git") {
                out.extend(files_under(&p, ext));
            }
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_example_applies_with_server_dry_run() {
    let cp = cluster().await;
    let examples = files_under(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")),
        "yaml",
    );
    assert!(examples.len() >= 5, "{examples:?}");
    // Every pod an example runs meets the restricted Pod Security Standard:
    // the apiserver warns of any that would not.
    let out = output(cp.kubectl().args([
        "label",
        "namespace",
        "shop",
        "pod-security.kubernetes.io/warn=restricted",
        "--overwrite",
    ]));
    assert!(out.status.success(), "{}", text(&out));
    for file in examples {
        let out = output(
            cp.kubectl()
                .args(["apply", "--dry-run=server", "-n", "shop", "-f"])
                .arg(&file),
        );
        let all = text(&out);
        assert!(out.status.success(), "{}: {all}", file.display());
        assert!(!all.contains("Warning"), "{}: {all}", file.display());
    }
}

#[test]
fn every_script_passes_bash_n_and_shellcheck() {
    let mut scripts = files_under(Path::new(env!("CARGO_MANIFEST_DIR")), "sh");
    scripts.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.ci/run"
    )));
    assert!(scripts.len() >= 4, "{scripts:?}");
    for s in &scripts {
        let out = output(Command::new("bash").arg("-n").arg(s));
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            s.display(),
            text(&out)
        );
    }
    let shellcheck =
        which("shellcheck").expect("shellcheck is installed by tests/testenv/install.sh");
    let out = output(Command::new(shellcheck).args(&scripts));
    assert!(out.status.success(), "{}", text(&out));
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.exists())
    })
}

/// The metric names the operator's /metrics can hold: each family, with the
/// suffixes its samples take. Families show only once they hold a series,
/// so one backup gets one of each.
fn exported_metric_names() -> std::collections::BTreeSet<String> {
    use dbbackup_operator::operator::metrics::{BackupId, Metrics};
    let metrics = Metrics::default();
    let id = BackupId {
        namespace: "shop".into(),
        name: "orders".into(),
        uid: "1".into(),
    };
    metrics.set_stale(&id, false);
    metrics.set_verification(&id, true, Some(1), Some(1));
    metrics.set_last_upload(&id, 1, Some(1));
    metrics.step_finished(&id, "upload", Some(1), true);
    metrics.reconcile_failed("APIError");
    let text = metrics.encode();
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_query_is_one_the_operator_exports() {
    let exported = exported_metric_names();
    assert!(
        exported.contains("dbbackup_last_success_timestamp_seconds"),
        "{exported:?}"
    );
    let files = [
        format!("{CHART}/dashboards/dbbackup.json"),
        format!("{CHART}/templates/prometheusrule.yaml"),
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut queried = 0;
        for (i, _) in text.match_indices("dbbackup_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "dbbackup_operator" || name.starts_with("dbbackup_operator") {
                continue;
            }
            assert!(
                exported.contains(&name),
                "{file}: {name} is not exported: {exported:?}"
            );
            queried += 1;
        }
        assert!(queried >= 3, "{file}");
    }
    // The dashboard is valid JSON, and every panel has a query.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/dashboards/dbbackup.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(panel["targets"][0]["expr"].is_string(), "{panel}");
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rendered = output(
        Command::new(support::process::bin("helm"))
            .args(["template", "dbb", CHART, "-n", RELEASE_NS])
            .args(["--set", "metrics.prometheusRule.enabled=true"])
            .args(["--show-only", "templates/prometheusrule.yaml"]),
    );
    assert!(rendered.status.success(), "{}", text(&rendered));
    let rule: serde_yaml::Value = serde_yaml::from_slice(&rendered.stdout).unwrap();
    let groups = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
        "groups".into(),
        rule["spec"]["groups"].clone(),
    )]))
    .unwrap();
    std::fs::write(dir.path().join("rules.yaml"), groups).unwrap();
    std::fs::copy(
        format!("{CHART}/tests/rules_test.yaml"),
        dir.path().join("rules_test.yaml"),
    )
    .unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules_test.yaml"],
    ] {
        let out = output(
            Command::new(support::process::bin("promtool"))
                .args(args)
                .current_dir(dir.path()),
        );
        assert!(out.status.success(), "promtool {args:?}: {}", text(&out));
    }
}

/// The workflow lints clean, pushes the image the chart defaults to, and
/// builds a plugin archive for each platform of the Krew manifest, under the
/// name the manifest downloads.
#[test]
fn the_release_workflow_passes_actionlint_and_pushes_the_charts_default_image() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = output(
        Command::new(support::process::bin("actionlint"))
            .arg("-no-color")
            .current_dir(root),
    );
    assert!(out.status.success(), "actionlint: {}", text(&out));
    let read = |path: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(format!("{root}/{path}")).unwrap()).unwrap()
    };
    let workflow = read(".github/workflows/release.yaml");
    let values = read("charts/dbbackup-operator/values.yaml");
    assert_eq!(workflow["env"]["IMAGE"], values["image"]["repository"]);

    let krew = read("krew/dbbackup.yaml");
    let platforms = krew["spec"]["platforms"].as_sequence().unwrap();
    let built = workflow["jobs"]["plugin"]["strategy"]["matrix"]["include"]
        .as_sequence()
        .unwrap();
    assert_eq!(platforms.len(), built.len());
    for m in built {
        let (os, arch) = (m["os"].as_str().unwrap(), m["arch"].as_str().unwrap());
        let p = platforms
            .iter()
            .find(|p| {
                let labels = &p["selector"]["matchLabels"];
                labels["os"].as_str() == Some(os) && labels["arch"].as_str() == Some(arch)
            })
            .unwrap_or_else(|| panic!("no Krew platform for {os}/{arch}"));
        let uri = p["uri"].as_str().unwrap();
        assert!(
            uri.ends_with(&format!("/kubectl-dbbackup-{os}-{arch}.tar.gz")),
            "{uri}"
        );
        assert_eq!(p["bin"], "kubectl-dbbackup");
    }
}

/// The Krew manifest as the release fills it in passes Krew's own validator,
/// and Krew installs the plugin from an archive packed as the release packs
/// it (the binary and LICENSE, checked against the manifest's SHA-256): the
/// installed `kubectl-dbbackup` runs.
#[test]
fn krew_validates_the_manifest_and_installs_the_plugin_archive_the_release_packs() {
    use sha2::Digest;
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    std::fs::create_dir(&pack).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_kubectl-dbbackup"),
        pack.join("kubectl-dbbackup"),
    )
    .unwrap();
    std::fs::copy(format!("{root}/LICENSE"), pack.join("LICENSE")).unwrap();
    // The workflow's own command, in the folder that holds both.
    let archive = dir.path().join("kubectl-dbbackup-linux-amd64.tar.gz");
    let out = output(
        Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .args(["kubectl-dbbackup", "LICENSE"])
            .current_dir(&pack),
    );
    assert!(out.status.success(), "tar: {}", text(&out));
    let sha = format!(
        "{:x}",
        sha2::Sha256::digest(std::fs::read(&archive).unwrap())
    );
    let template = std::fs::read_to_string(format!("{root}/krew/dbbackup.yaml")).unwrap();
    let manifest = template
        .replace("${VERSION}", env!("CARGO_PKG_VERSION"))
        .replace("${SHA256_LINUX_AMD64}", &sha)
        .replace("${SHA256_LINUX_ARM64}", &"1".repeat(64))
        .replace("${SHA256_DARWIN_AMD64}", &"2".repeat(64))
        .replace("${SHA256_DARWIN_ARM64}", &"3".repeat(64));
    assert!(
        !manifest.contains("${"),
        "a placeholder the release does not fill: {manifest}"
    );
    let path = dir.path().join("dbbackup.yaml");
    std::fs::write(&path, manifest).unwrap();

    let out = output(
        Command::new(support::process::bin("validate-krew-manifest"))
            .arg("-manifest")
            .arg(&path)
            .arg("-skip-install"),
    );
    assert!(
        out.status.success(),
        "validate-krew-manifest: {}",
        text(&out)
    );

    let krew_root = dir.path().join("krew");
    let out = output(
        Command::new(support::process::bin("krew"))
            .args(["install", "--manifest"])
            .arg(&path)
            .arg("--archive")
            .arg(&archive)
            .env("KREW_ROOT", &krew_root)
            .env("KREW_OS", "linux")
            .env("KREW_ARCH", "amd64"),
    );
    assert!(out.status.success(), "krew install: {}", text(&out));
    // Krew's index wants a license in every archive.
    let store = krew_root.join(format!("store/dbbackup/v{}", env!("CARGO_PKG_VERSION")));
    assert!(store.join("LICENSE").is_file(), "{}", store.display());
    let out = output(Command::new(krew_root.join("bin/kubectl-dbbackup")).arg("--help"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("download"), "{}", text(&out));
}
