//! One reconcile's pass over a backup's status: what it records, and the
//! conditions it judges (staleness, notifications, pods that cannot start).

use super::RESYNC;
use super::reports::PodReport;
use super::status::{self, record_reports, staleness};
use crate::api::{DatabaseBackup, DatabaseBackupStatus, NotifyEvent};
use crate::operator::conditions::{self, NOTIFIED, Note, Observed, STAGING_NODE_READY, STALE};
use crate::operator::metrics::BackupId;
use crate::operator::notify::Notice;
use crate::operator::{Context, checks};
use crate::reasons;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::time::Duration;

/// One reconcile's view of the status it is computing, and the Events to
/// publish once that status is written.
pub(super) struct Pass {
    pub(super) status: DatabaseBackupStatus,
    pub(super) notes: Vec<Note>,
    /// What the notification targets hear of, once the status is written.
    pub(super) notices: Vec<Notice>,
    pub(super) ready: Observed,
    pub(super) generation: Option<i64>,
    pub(super) now: Time,
    pub(super) tz: chrono_tz::Tz,
}

impl Pass {
    pub(super) fn new(db: &DatabaseBackup, old: &DatabaseBackupStatus, ready: Observed) -> Pass {
        let generation = db.metadata.generation;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut status = old.clone();
        status.observed_generation = generation;
        conditions::set_condition(&mut status.conditions, &ready, generation, &now);
        Pass {
            status,
            notes: vec![],
            notices: vec![],
            ready,
            generation,
            now,
            tz: db.spec.time_zone.parse().unwrap_or(chrono_tz::UTC),
        }
    }

    pub(super) fn note(&mut self, warning: bool, reason: &str, message: String) {
        self.notes.push(Note {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    pub(super) fn record(&mut self, reports: Vec<PodReport>, present: &[String]) {
        let (notes, notices) = record_reports(
            &mut self.status,
            reports,
            present,
            self.generation,
            &self.now,
        );
        self.notes.extend(notes);
        self.notices.extend(notices);
    }

    /// Hands the notifier the targets and their URLs, and sets Notified from
    /// how their deliveries went (an Event when that turns). Returns the URLs.
    pub(super) async fn judge_notifications(
        &mut self,
        db: &DatabaseBackup,
        ctx: &Context,
    ) -> HashMap<String, Result<String, String>> {
        let key = ObjectRef::from_obj(db);
        let urls = match db.spec.notify.is_empty() {
            true => HashMap::new(),
            false => checks::notify_urls(db, &ctx.client).await,
        };
        ctx.notifier.configure(&key, &db.spec.notify, &urls);
        let Some(notified) = ctx.notifier.condition(&key) else {
            self.status.conditions.retain(|c| c.type_ != NOTIFIED);
            return urls;
        };
        let was = conditions::find(&self.status.conditions, NOTIFIED)
            .map(|c| (c.status == "True", c.message.clone()));
        let turned = match &was {
            None => !notified.status,
            Some((status, message)) => {
                *status != notified.status || (!notified.status && *message != notified.message)
            }
        };
        if turned {
            self.note(!notified.status, &notified.reason, notified.message.clone());
        }
        conditions::set_condition(
            &mut self.status.conditions,
            &notified,
            self.generation,
            &self.now,
        );
        urls
    }

    /// Pods that cannot start, each said once (not at every kubelet retry).
    /// A step's refusal (a quota) that is over is dropped from its condition,
    /// which its next result sets again: it no longer says the pod is refused
    /// while that pod runs for hours.
    pub(super) fn record_stuck(&mut self, stuck: Vec<(&'static str, Observed)>) {
        self.status.conditions.retain(|c| {
            let refused = [reasons::QUOTA_EXCEEDED, reasons::PODS_NOT_CREATED];
            !refused.contains(&c.reason.as_str()) || stuck.iter().any(|(_, s)| s.type_ == c.type_)
        });
        for (reason, stuck) in stuck {
            let known = conditions::find(&self.status.conditions, stuck.type_)
                .is_some_and(|c| conditions::says_stuck(c, &stuck));
            if !known {
                self.note(true, reason, stuck.message.clone());
                conditions::set_condition(
                    &mut self.status.conditions,
                    &stuck,
                    self.generation,
                    &self.now,
                );
            }
        }
    }

    /// Sets StagingNodeReady from `observed` (None: not known, left as it
    /// was), with an Event when the node goes, and when it comes back.
    /// True while the node is not Ready: the reconcile looks again soon.
    pub(super) fn judge_staging_node(&mut self, observed: Option<Observed>) -> bool {
        let Some(observed) = observed else {
            return false;
        };
        let was = conditions::find(&self.status.conditions, STAGING_NODE_READY)
            .map(|c| c.status == "True");
        if was != Some(observed.status) && (was.is_some() || !observed.status) {
            self.note(!observed.status, &observed.reason, observed.message.clone());
        }
        conditions::set_condition(
            &mut self.status.conditions,
            &observed,
            self.generation,
            &self.now,
        );
        !observed.status
    }

    /// Sets Stale and its metric; returns when to look again, at the latest
    /// when the next scheduled upload becomes overdue.
    pub(super) fn judge_staleness(
        &mut self,
        db: &DatabaseBackup,
        ctx: &Context,
        old: &DatabaseBackupStatus,
    ) -> Duration {
        let Ok(schedule) = checks::parse_schedule(&db.spec.schedule) else {
            return RESYNC;
        };
        let jobs = &db.spec.jobs;
        let max_run = chrono::Duration::seconds(
            jobs.starting_deadline_seconds + 2 * jobs.active_deadline_seconds,
        );
        let was_suspended = conditions::find(&old.conditions, STALE)
            .is_some_and(|c| c.reason == reasons::SUSPENDED);
        if was_suspended && !db.spec.suspend {
            self.status.resumed_time = Some(self.now.clone());
        }
        let (stale, due) = match db.spec.suspend {
            true => (status::suspended(), None),
            false => staleness(
                &schedule,
                self.tz,
                max_run,
                self.status.last_upload_time.as_ref(),
                (
                    db.metadata.creation_timestamp.as_ref(),
                    self.status.resumed_time.as_ref(),
                ),
                chrono::Utc::now(),
            ),
        };
        let was_stale =
            conditions::find(&old.conditions, STALE).is_some_and(|c| c.status == "True");
        if stale.status && !was_stale {
            self.note(true, reasons::BACKUP_STALE, stale.message.clone());
            self.notices.push(Notice {
                event: NotifyEvent::Stale,
                // The message names the missed run: one notice per episode.
                id: format!("stale:{}", stale.message),
                reason: reasons::NO_RECENT_UPLOAD.into(),
                message: stale.message.clone(),
                key: None,
                time: self.now.clone(),
            });
        }
        conditions::set_condition(
            &mut self.status.conditions,
            &stale,
            self.generation,
            &self.now,
        );
        ctx.metrics.set_stale(&BackupId::of(db), stale.status);
        due.map_or(RESYNC, |due| RESYNC.min(due + Duration::from_secs(1)))
    }
}
