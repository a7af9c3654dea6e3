use super::*;

fn id(name: &str, uid: &str) -> BackupId {
    BackupId {
        namespace: "shop".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

/// A reconcile that started before the deletion and writes after it
/// brings no series back; a new backup of the same name gets its own.
#[test]
fn a_write_after_the_deletion_leaves_no_series() {
    let m = Metrics::default();
    m.set_last_upload(&id("orders", "1"), 1_764_039_600, Some(10));
    m.forget_backup(&id("orders", "1"));
    m.step_finished(&id("orders", "1"), "upload", Some(3), true);
    m.set_stale(&id("orders", "1"), true);
    m.set_verification(&id("orders", "1"), true, Some(1), Some(1));
    m.set_last_upload(&id("orders", "1"), 1_764_039_600, Some(10));
    let text = m.encode();
    assert!(!text.contains(r#"name="orders""#), "{text}");
    m.set_stale(&id("orders", "2"), false);
    assert!(
        m.encode()
            .contains(r#"dbbackup_backup_stale{namespace="shop",name="orders"} 0"#)
    );
}

/// A backup whose deletion was missed loses its series at the next sweep;
/// a live one keeps them.
#[test]
fn a_sweep_drops_the_series_of_backups_that_are_gone() {
    let m = Metrics::default();
    for name in ["gone", "live"] {
        let id = id(name, name);
        m.set_stale(&id, true);
        m.set_last_upload(&id, 1_764_039_600, Some(10));
        m.step_finished(&id, "dump", Some(3), true);
    }
    m.keep_only(|ns, name| (ns, name) == ("shop", "live"));
    let text = m.encode();
    assert!(!text.contains(r#"name="gone""#), "{text}");
    assert!(
        text.contains(r#"dbbackup_backup_stale{namespace="shop",name="live"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"dbbackup_step_failures_total{namespace="shop",name="live",step="dump"} 1"#
        ),
        "{text}"
    );
}
