//! Independent linters on what we ship: kube-score and checkov run on the
//! chart (default values and two replicas) and on the golden pod specs the
//! operator generates. Every finding must be in `tests/accepted-findings.tsv`
//! with its reason, and every line there must still match a finding.

use super::{bin, helm_template, output, text};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ACCEPTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/accepted-findings.tsv");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// One finding: where (`chart`, `chart-replicas-2`, a golden file), which
/// tool and check, which object, and the tool's detail.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Finding([String; 5]);

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\t"))
    }
}

/// kube-score's checks that did not pass (grade below 10), one finding per
/// comment (a container's missing limit, say).
fn kube_score(source: &str, file: &Path) -> Vec<Finding> {
    let out = output(
        Command::new(bin("kube-score"))
            .arg("score")
            .arg(file)
            .args(["-o", "json"]),
    );
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kube-score on {source}: {e}: {}", text(&out)));
    let mut found = vec![];
    for o in &objects {
        let object = format!(
            "{}/{}",
            o["type_meta"]["kind"].as_str().unwrap(),
            o["object_meta"]["name"].as_str().unwrap()
        );
        for c in o["checks"].as_array().unwrap() {
            if c["skipped"] == true || c["grade"].as_i64() == Some(10) {
                continue;
            }
            let id = c["check"]["id"].as_str().unwrap().to_string();
            let comments = c["comments"].as_array().cloned().unwrap_or_default();
            let details: Vec<String> = match comments.is_empty() {
                true => vec![c["check"]["name"].as_str().unwrap().to_string()],
                false => comments
                    .iter()
                    .map(|m| {
                        let path = m["path"].as_str().unwrap_or_default();
                        let summary = m["summary"].as_str().unwrap_or_default();
                        match path.is_empty() {
                            true => summary.to_string(),
                            false => format!("({path}) {summary}"),
                        }
                    })
                    .collect(),
            };
            for detail in details {
                let f = [source, "kube-score", &id, &object, &detail].map(String::from);
                found.push(Finding(f));
            }
        }
    }
    found
}

/// checkov's failed Kubernetes checks.
fn checkov(source: &str, file: &Path) -> Vec<Finding> {
    let out = output(
        Command::new(bin("checkov"))
            .args([
                "--framework",
                "kubernetes",
                "--quiet",
                "--compact",
                "-o",
                "json",
            ])
            .args(["--skip-download", "-f"])
            .arg(file),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov on {source}: {e}: {}", text(&out)));
    // One report, or a list of them (one per framework that ran).
    let reports = match report {
        serde_json::Value::Array(reports) => reports,
        one => vec![one],
    };
    for r in &reports {
        assert_eq!(
            r["check_type"],
            "kubernetes",
            "checkov on {source} checked nothing as Kubernetes: {}",
            text(&out)
        );
    }
    reports
        .iter()
        .flat_map(|r| {
            r["results"]["failed_checks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .iter()
        .map(|f| {
            // "Kind.namespace.name", and for a Pod check also its labels.
            let resource = f["resource"].as_str().unwrap();
            let mut parts = resource.splitn(3, '.');
            let kind = parts.next().unwrap_or_default();
            let name = parts.nth(1).unwrap_or_default();
            let name = name.split(".app.kubernetes.io").next().unwrap();
            let name = name.split(".dbbackup.io").next().unwrap();
            let check = f["check_id"].as_str().unwrap();
            let detail = f["check_name"].as_str().unwrap();
            let object = format!("{kind}/{name}");
            Finding([source, "checkov", check, &object, detail].map(String::from))
        })
        .collect()
}

/// `pattern` with `*` for any run of characters.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            s.starts_with(head)
                && (0..=s.len() - head.len())
                    .filter(|&i| s.is_char_boundary(head.len() + i))
                    .any(|i| glob(rest, &s[head.len() + i..]))
        }
    }
}

/// The accepted findings: five patterns and a reason per line.
fn accepted() -> Vec<([String; 5], String)> {
    let text = std::fs::read_to_string(ACCEPTED).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(
                cols.len() == 6 && !cols[5].trim().is_empty(),
                "{ACCEPTED}: a line needs five patterns and a reason, tab-separated: {l}"
            );
            let patterns = std::array::from_fn(|i| cols[i].to_string());
            (patterns, cols[5].to_string())
        })
        .collect()
}

#[test]
fn independent_linters_find_nothing_but_the_accepted_findings() {
    let dir = tempfile::tempdir().unwrap();
    let mut sources = vec![];
    for (name, sets) in [
        ("chart", &[][..]),
        ("chart-replicas-2", &["replicas=2"][..]),
    ] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, helm_template(sets)).unwrap();
        sources.push((name.to_string(), path));
    }
    for golden in [
        "mariadb-children.yaml",
        "postgres-children.yaml",
        "restore-job.yaml",
    ] {
        sources.push((format!("golden/{golden}"), Path::new(GOLDEN).join(golden)));
    }
    let mut found = BTreeSet::new();
    for (source, path) in &sources {
        found.extend(kube_score(source, path));
        found.extend(checkov(source, path));
    }
    let accepted = accepted();
    let matches = |(patterns, _): &([String; 5], String), f: &Finding| {
        patterns.iter().zip(&f.0).all(|(p, s)| glob(p, s))
    };
    let unaccepted: Vec<String> = found
        .iter()
        .filter(|f| !accepted.iter().any(|a| matches(a, f)))
        .map(|f| f.to_string())
        .collect();
    let stale: Vec<String> = accepted
        .iter()
        .filter(|a| !found.iter().any(|f| matches(a, f)))
        .map(|(p, _)| p.join("\t"))
        .collect();
    assert!(
        unaccepted.is_empty() && stale.is_empty(),
        "findings not in {ACCEPTED} (fix them, or add each with its reason):\n{}\n\n\
         accepted lines that match no finding any more (remove them):\n{}",
        unaccepted.join("\n"),
        stale.join("\n")
    );
}

#[test]
fn a_glob_matches_any_run_of_characters() {
    assert!(glob("*", ""));
    assert!(glob("CronJob/*", "CronJob/orders-dump"));
    assert!(glob(
        "(*) CPU limit is not set",
        "(dump) CPU limit is not set"
    ));
    assert!(glob("a*b*c", "a--b--c"));
    assert!(!glob("a*b*c", "a--c"));
    assert!(!glob("Job/*", "CronJob/x"));
}
