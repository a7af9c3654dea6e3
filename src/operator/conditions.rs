//! Conditions as the reconcilers compute them, before they are written: one
//! setter that keeps a condition's transition time unless its status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const DUMP_SUCCEEDED: &str = "DumpSucceeded";
pub const UPLOAD_SUCCEEDED: &str = "UploadSucceeded";
/// False while a dump the store never proved is kept back on the staging
/// volume (`DumpStuck`, naming it), though newer dumps are sent.
pub const DUMPS_PROVEN: &str = "DumpsProven";
/// Whether the node the staging volume is bound to (a local volume) is
/// Ready: set only for such a volume, and False names the node.
pub const STAGING_NODE_READY: &str = "StagingNodeReady";
pub const STALE: &str = "Stale";
/// Whether the last restore drill proved the dump it drilled restorable.
pub const VERIFIED: &str = "Verified";
/// Whether every notification target took its last message.
pub const NOTIFIED: &str = "Notified";
/// The condition a restore reports.
pub const RESTORED: &str = "Restored";

/// A condition as the reconciler sees it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observed {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Observed {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Sets `observed` in `conditions`. The transition time only moves when the
/// status flips, so an unchanged condition compares equal and causes no write.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    observed: &Observed,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if observed.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == observed.type_);
    let transition = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    let condition = Condition {
        type_: observed.type_.to_string(),
        status: status.to_string(),
        reason: observed.reason.clone(),
        message: observed.message.clone(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when `condition` already says what `stuck` says, but for the
/// kubelet's detail, which alternates while it backs off (ErrImagePull,
/// ImagePullBackOff): no status write and no Event for each alternation.
pub fn says_stuck(condition: &Condition, stuck: &Observed) -> bool {
    let gist = |m: &str| m.split(" (").next().unwrap_or_default().to_string();
    condition.status == "False"
        && condition.reason == stuck.reason
        && gist(&condition.message) == gist(&stuck.message)
}

/// An Event to publish once the status that records it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time() {
        let mut conds = vec![];
        let ok = Observed::new(READY, true, "Reconciled", "ok");
        set_condition(&mut conds, &ok, Some(1), &at(100));
        let before = conds.clone();
        set_condition(&mut conds, &ok, Some(1), &at(200));
        assert_eq!(conds, before);
    }

    #[test]
    fn reason_change_without_flip_keeps_time_but_updates_reason() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            &Observed::new(READY, false, "SecretNotFound", "a"),
            Some(1),
            &at(100),
        );
        set_condition(
            &mut conds,
            &Observed::new(READY, false, "SecretKeyMissing", "b"),
            Some(1),
            &at(200),
        );
        assert_eq!(conds[0].reason, "SecretKeyMissing");
        assert_eq!(conds[0].last_transition_time, at(100));
    }

    #[test]
    fn flip_moves_transition_time() {
        let mut conds = vec![];
        set_condition(
            &mut conds,
            &Observed::new(READY, false, "SecretNotFound", "a"),
            Some(1),
            &at(100),
        );
        set_condition(
            &mut conds,
            &Observed::new(READY, true, "Reconciled", "ok"),
            Some(2),
            &at(200),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].last_transition_time, at(200));
        assert_eq!(conds[0].observed_generation, Some(2));
    }
}
