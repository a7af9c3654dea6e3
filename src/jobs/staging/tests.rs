use super::*;

fn staging() -> (tempfile::TempDir, Staging) {
    let dir = tempfile::tempdir().unwrap();
    let s = Staging::new(dir.path());
    s.create().unwrap();
    (dir, s)
}

#[test]
fn a_claim_is_not_replaced_by_a_later_dump() {
    let (_d, s) = staging();
    std::fs::write(s.dumps().join("datadump.sql"), "first").unwrap();
    let claimed = s.claim().unwrap().unwrap();
    let partial = s.partial("datadump.sql");
    std::fs::write(&partial, "second").unwrap();
    s.publish(&partial, "datadump.sql").unwrap();
    assert_eq!(std::fs::read_to_string(&claimed.path).unwrap(), "first");
    s.release(&claimed).unwrap();
    let next = s.claim().unwrap().unwrap();
    assert_eq!(std::fs::read_to_string(&next.path).unwrap(), "second");
}

#[test]
fn a_sent_marker_lives_until_its_claim_is_released() {
    let (_d, s) = staging();
    std::fs::write(s.dumps().join(".uploading-datadump.sql"), "x").unwrap();
    let c = s.claim().unwrap().unwrap();
    assert_eq!(s.sent_key(&c), None);
    s.mark_sent(&c, "2026-11-26/datadump1.sql").unwrap();
    assert_eq!(s.sent_key(&c).as_deref(), Some("2026-11-26/datadump1.sql"));
    s.release(&c).unwrap();
    assert_eq!(s.sent_key(&c), None);
    assert!(!c.path.exists());
}

#[test]
fn a_marker_left_beside_a_new_dump_names_nothing_and_is_removed() {
    let (_d, s) = staging();
    // An upload killed after deleting its claim, before its marker.
    std::fs::write(
        s.dumps().join(".sent-datadump.sql"),
        "2026-11-25/datadump1.sql",
    )
    .unwrap();
    std::fs::write(s.dumps().join("datadump.sql"), "new").unwrap();
    let c = s.claim().unwrap().unwrap();
    assert!(!c.left_over);
    assert_eq!(s.sent_key(&c), None);
    assert!(!s.dumps().join(".sent-datadump.sql").exists());
}

#[test]
fn a_left_claim_is_taken_before_the_staged_dump() {
    let (_d, s) = staging();
    std::fs::write(s.dumps().join(".uploading-datadump.sql.gz"), "left").unwrap();
    std::fs::write(s.dumps().join("datadump.sql"), "new").unwrap();
    let c = s.claim().unwrap().unwrap();
    assert_eq!(
        (c.name, std::fs::read_to_string(&c.path).unwrap().as_str()),
        ("datadump.sql.gz", "left")
    );
    assert!(
        s.dumps().join("datadump.sql").exists(),
        "the new dump waits"
    );
}

#[test]
fn publishing_replaces_an_unclaimed_dump_of_another_compression() {
    let (_d, s) = staging();
    std::fs::write(s.dumps().join("datadump.sql.gz"), "old").unwrap();
    let old = std::fs::metadata(s.dumps().join("datadump.sql.gz"))
        .unwrap()
        .modified()
        .unwrap();
    let partial = s.partial("datadump.sql.zst");
    std::fs::write(&partial, "new").unwrap();
    let published = s.publish(&partial, "datadump.sql.zst").unwrap();
    assert_eq!(published.replaced, Some(old));
    let partial = s.partial("datadump.sql.zst");
    std::fs::write(&partial, "newer").unwrap();
    let again = s.publish(&partial, "datadump.sql.zst").unwrap();
    assert_eq!(again.replaced, Some(published.finished));
    let mut names: Vec<_> = std::fs::read_dir(s.dumps())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["datadump.sql.zst"]);
}

#[test]
fn a_dump_claimed_before_the_next_is_published_was_not_replaced() {
    let (_d, s) = staging();
    std::fs::write(s.dumps().join("datadump.sql"), "first").unwrap();
    let claimed = s.claim().unwrap().unwrap();
    let partial = s.partial("datadump.sql");
    std::fs::write(&partial, "second").unwrap();
    let published = s.publish(&partial, "datadump.sql").unwrap();
    assert_eq!(published.replaced, None);
    assert_eq!(std::fs::read_to_string(&claimed.path).unwrap(), "first");
    let partial = s.partial("datadump.sql");
    std::fs::write(&partial, "third").unwrap();
    let again = s.publish(&partial, "datadump.sql").unwrap();
    assert_eq!(again.replaced, Some(published.finished));
    assert_eq!(
        std::fs::read_to_string(s.dumps().join("datadump.sql")).unwrap(),
        "third"
    );
    assert!(!partial.exists(), "the replaced dump is removed");
}

#[test]
fn partials_are_unique_per_run_and_swept_under_the_lock() {
    let (_d, s) = staging();
    let before = std::time::SystemTime::now();
    let (a, b) = (s.partial("datadump.sql"), s.partial("datadump.sql"));
    assert_ne!(a, b);
    // Its name says when its dump started, for the upload that follows it.
    let started = super::partial_started(&a).unwrap();
    assert!(started >= before && started <= std::time::SystemTime::now());
    std::fs::write(&a, "x").unwrap();
    let _lock = s.lock(Lock::Dump, || panic!("free")).unwrap();
    s.remove_partials().unwrap();
    assert!(!a.exists());
}

#[test]
fn a_held_lock_makes_the_next_taker_wait() {
    let (_d, s) = staging();
    let held = s.lock(Lock::Upload, || panic!("free")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let root = s.root.clone();
    let waiter = std::thread::spawn(move || {
        let s = Staging::new(root);
        let _l = s.lock(Lock::Upload, || tx.send(()).unwrap()).unwrap();
    });
    rx.recv().unwrap();
    drop(held);
    waiter.join().unwrap();
}

#[test]
fn the_newest_partial_is_followed_and_records_are_not() {
    let (_d, s) = staging();
    assert!(s.newest_partial().unwrap().is_none());
    let old = s.dumps().join(".partial-1-1-0-datadump.sql.gz");
    std::fs::write(&old, "killed").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new = s.partial("datadump.sql.zst");
    std::fs::write(&new, "growing").unwrap();
    std::fs::write(s.dumps().join(".partial-replaced-datadump.sql"), "x").unwrap();
    s.record_checksum(&old, 6, 0xabc).unwrap();
    assert_eq!(
        s.newest_partial().unwrap(),
        Some((new.clone(), "datadump.sql.zst"))
    );
    assert_eq!(s.recorded_checksum(&old), Some((6, 0xabc)));
    assert_eq!(s.recorded_checksum(&new), None);
    // A release keeps the records of dumps still being written only.
    s.record_checksum(&new, 7, 0xdef).unwrap();
    std::fs::remove_file(&old).unwrap();
    std::fs::write(s.dumps().join("datadump.sql"), "sent").unwrap();
    let claimed = s.claim().unwrap().unwrap();
    s.release(&claimed).unwrap();
    assert_eq!(s.recorded_checksum(&old), None);
    assert_eq!(s.recorded_checksum(&new), Some((7, 0xdef)));
    std::fs::write(&old, "killed").unwrap();
    s.record_checksum(&old, 6, 0xabc).unwrap();
    // The next dump's sweep takes partial files, not records: the upload
    // following the dump put in place last may still need its own.
    s.remove_partials().unwrap();
    assert_eq!(s.recorded_checksum(&old), Some((6, 0xabc)));
    assert!(s.newest_partial().unwrap().is_none());
}

#[test]
fn a_running_dump_is_seen_by_its_lock() {
    let (_d, s) = staging();
    assert!(!s.dump_running().unwrap());
    let held = s.lock(Lock::Dump, || panic!("free")).unwrap();
    assert!(s.dump_running().unwrap());
    drop(held);
    assert!(!s.dump_running().unwrap());
}

/// The third failed proof in a row moves a claim aside as stuck; it is no
/// longer claimed, so the next dump is; the count starts again for it.
#[test]
fn a_claim_unproven_three_times_is_moved_aside_and_the_next_dump_is_claimed() {
    let (_d, s) = staging();
    std::fs::write(s.dumps().join("datadump.sql"), "a").unwrap();
    let a = s.claim().unwrap().unwrap();
    assert_eq!(s.unproven(&a).unwrap(), None);
    assert_eq!(s.unproven(&a).unwrap(), None);
    let aside = s.unproven(&a).unwrap().expect("moved aside at the third");
    assert_eq!(std::fs::read_to_string(&aside).unwrap(), "a");
    assert_eq!(s.claim().unwrap().map(|c| c.path), None);
    std::fs::write(s.dumps().join("datadump.sql"), "b").unwrap();
    let b = s.claim().unwrap().unwrap();
    assert_eq!(s.unproven(&b).unwrap(), None, "b's count starts at 0");
    let stuck = s.stuck().unwrap();
    assert_eq!(stuck.len(), 1);
    assert!(stuck[0].stuck && stuck[0].path == aside);
}

/// A stuck dump sent while a claim waits beside it marks itself, never the
/// claim: a killed upload's next run must not take the claim for sent.
#[test]
fn a_stuck_dumps_marker_never_speaks_for_the_claim_beside_it() {
    let (_d, s) = staging();
    std::fs::write(
        s.dumps().join(".stuck-2026-11-25T03:00:00Z-datadump.sql"),
        "a",
    )
    .unwrap();
    std::fs::write(s.dumps().join(".uploading-datadump.sql"), "b").unwrap();
    let stuck = s.stuck().unwrap().remove(0);
    s.mark_sent(&stuck, "2026-11-25/datadump1.sql").unwrap();
    let claim = s.claim().unwrap().unwrap();
    assert!(claim.left_over);
    assert_eq!(s.sent_key(&claim), None);
    s.release(&stuck).unwrap();
    assert!(!stuck.path.exists());
    assert_eq!(std::fs::read_to_string(&claim.path).unwrap(), "b");
}
