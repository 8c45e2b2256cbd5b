//! Runs — each agent's part of a command — and what happened to them: events are kept in
//! order, so a watcher that joins late replays the run from its start and then follows it. A
//! run keeps its `accepted` and `finished` and the newest `RUN_EVENTS` (1,000) log and progress
//! events, with a count of those dropped (`domain::events`).
//!
//! The store keeps the runs, the newest `RETAINED_COMMANDS` (10,000) ended ones.
//! Watchers wait on a `watch` counter, so nothing a late watcher needs is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

pub use ferry_api::{RenderedPayload, RunEvent};
use ferry_lifecycle::End;

use super::events::{Droppable, EventLog, RUN_EVENTS, Since};
use ferry_protocol::{CommandResult, LogLevel, ResultStats};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Where an agent's run is in its life, and how it ended: the one list, kept in
/// `ferry-lifecycle` with what derives from it (final, error, summary bucket).
pub use ferry_lifecycle::Status as RunStatus;

/// One agent's run of a command, as the operator API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunView {
    /// Its id.
    pub id: String,
    /// The agent it was sent to.
    pub agent: String,
    /// Its topic.
    pub topic: String,
    /// Where it is, or how it ended.
    pub status: RunStatus,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The last progress the plugin reported.
    pub progress: Option<u8>,
    /// Why it did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The plugin's output.
    #[serde(flatten)]
    pub output: RenderedPayload,
    /// What it cost on the agent.
    pub stats: Option<ResultStats>,
}

struct Record {
    view: RunView,
    events: EventLog<RunEvent>,
}

impl Droppable for RunEvent {
    fn droppable(&self) -> bool {
        matches!(self, RunEvent::Log { .. } | RunEvent::Progress { .. })
    }
}

/// Which operator command an agent's run belongs to, and what it needs again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Origin {
    /// The operator command's id.
    pub(crate) fleet: String,
    /// The agent's place in it.
    pub(crate) index: u32,
    /// The command's timeout on the agent.
    pub(crate) timeout_ms: Option<u64>,
}

/// A run in the store: its record, a counter watchers wait on, and a way to cancel it.
pub struct RunEntry {
    origin: Origin,
    record: Mutex<Record>,
    changed: watch::Sender<usize>,
    cancel: Notify,
    /// The mailbox of the task that drives the run, while one does: report streams hand it
    /// the results they carry and wait for its word that the result is on disk.
    driver: Mutex<Option<mpsc::UnboundedSender<Report>>>,
}

/// A result an agent delivered on a report stream, and where to say whether it is on disk.
pub(crate) struct Report {
    pub(crate) result: CommandResult,
    pub(crate) recorded: oneshot::Sender<bool>,
}

impl RunEntry {
    /// A copy of the command's current view.
    pub fn view(&self) -> RunView {
        self.record.lock().view.clone()
    }

    /// The kept events numbered from `from` on (a run drops its oldest log and progress
    /// events past `RUN_EVENTS`; numbers count those too).
    pub fn events_since(&self, from: usize) -> Vec<RunEvent> {
        self.record.lock().events.since(from).events
    }

    /// The kept events numbered from `from` on, the number to ask from next, and how many in
    /// between were dropped: what a follower needs to miss nothing it could have had.
    pub fn events_after(&self, from: usize) -> Since<RunEvent> {
        self.record.lock().events.since(from)
    }

    /// How many of its log and progress events the run has dropped.
    pub fn events_dropped(&self) -> usize {
        self.record.lock().events.dropped()
    }

    /// A receiver that changes whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// Asks the dispatcher to cancel the command.
    pub fn request_cancel(&self) {
        self.cancel.notify_one();
    }

    /// Resolves when a cancel was requested.
    pub async fn cancelled(&self) {
        self.cancel.notified().await
    }

    /// Waits until the command has ended and returns its final view.
    pub async fn wait(&self) -> RunView {
        let mut rx = self.subscribe();
        loop {
            let view = self.view();
            if view.status.is_final() {
                return view;
            }
            if rx.changed().await.is_err() {
                return self.view();
            }
        }
    }

    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Adds `event`; false if the command had already ended, and the event was dropped.
    fn push(&self, event: RunEvent) -> bool {
        let mut record = self.record.lock();
        if record.view.status.is_final() {
            // A result is final; anything after it (a late log line, a result delivered a
            // second time after a reconnection) is dropped, not reordered.
            return false;
        }
        match &event {
            RunEvent::Accepted { .. } => {
                if record.view.status == RunStatus::Running {
                    // Accepted again after a reconnection: nothing new.
                    return false;
                }
                record.view.status = RunStatus::Running
            }
            RunEvent::Progress { percent, .. } => record.view.progress = Some(*percent),
            RunEvent::Log { .. } => {}
            RunEvent::Finished {
                at,
                status,
                detail,
                output,
                stats,
            } => {
                record.view.status = *status;
                record.view.finished_at = Some(*at);
                record.view.detail = detail.clone();
                record.view.output = output.clone();
                record.view.stats = stats.clone();
            }
        }
        let count = record.events.push(event);
        drop(record);
        self.changed.send_replace(count);
        true
    }

    /// The agent accepted the command; false if it had already.
    pub(crate) fn accepted(&self) -> bool {
        self.push(RunEvent::Accepted {
            at: OffsetDateTime::now_utc(),
        })
    }

    /// The plugin reported progress.
    pub(crate) fn progress(&self, percent: u8, message: String) {
        let _ = self.push(RunEvent::Progress {
            at: OffsetDateTime::now_utc(),
            percent: percent.min(100),
            message,
        });
    }

    /// The plugin logged a line.
    pub(crate) fn log(&self, level: LogLevel, message: String) {
        let _ = self.push(RunEvent::Log {
            at: OffsetDateTime::now_utc(),
            level,
            message,
        });
    }

    /// The `Finished` event `end` makes, and the view with it, without showing it: what is
    /// written to disk before anyone sees the run as ended.
    pub(crate) fn ending(&self, end: &End) -> (RunView, RunEvent) {
        let at = OffsetDateTime::now_utc();
        let result = end.result.as_ref();
        let output = result.map_or_else(RenderedPayload::default, |r| {
            RenderedPayload::new(&r.payload)
        });
        let stats = result.map(|r| r.stats.clone());
        let view = RunView {
            status: end.status,
            finished_at: Some(at),
            detail: end.detail.clone(),
            output: output.clone(),
            stats: stats.clone(),
            ..self.view()
        };
        let event = RunEvent::Finished {
            at,
            status: end.status,
            detail: end.detail.clone(),
            output,
            stats,
        };
        (view, event)
    }

    /// Shows the end made by [`RunEntry::ending`] once it is on disk; false if the command
    /// had already ended.
    pub(crate) fn finish(&self, finished: RunEvent) -> bool {
        debug_assert!(matches!(finished, RunEvent::Finished { .. }));
        self.push(finished)
    }

    /// The command ended without a result from the agent, and without a record on disk (the
    /// disk refused the run before it was sent); false if it had already ended.
    pub(crate) fn finish_unrecorded(&self, status: RunStatus, detail: String) -> bool {
        let end = End {
            status,
            detail: Some(detail),
            result: None,
        };
        self.push(self.ending(&end).1)
    }

    /// Takes report streams' results until [`RunEntry::detach`].
    pub(crate) fn attach(&self) -> mpsc::UnboundedReceiver<Report> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.driver.lock() = Some(tx);
        rx
    }

    /// No task drives the run any more.
    pub(crate) fn detach(&self) {
        self.driver.lock().take();
    }

    /// Hands a result from a report stream to the run's driver: true once it is on disk (or
    /// the run had ended, which is on disk already), false if it could not be recorded now.
    pub(crate) async fn report(&self, result: CommandResult) -> bool {
        if self.view().status.is_final() {
            return true;
        }
        let driver = self.driver.lock().clone();
        let Some(driver) = driver else {
            return false;
        };
        let (recorded, answer) = oneshot::channel();
        if driver.send(Report { result, recorded }).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// How many ended commands the store keeps before it forgets the oldest.
pub const RETAINED_COMMANDS: usize = 10_000;

/// Every run the server holds, newest last.
#[derive(Default)]
pub struct RunStore {
    inner: Mutex<StoreInner>,
}

#[derive(Default)]
struct StoreInner {
    by_id: HashMap<String, Arc<RunEntry>>,
    order: VecDeque<String>,
}

impl RunStore {
    /// Creates a pending command.
    pub(crate) fn create(
        &self,
        id: String,
        agent: String,
        topic: String,
        origin: Origin,
    ) -> Arc<RunEntry> {
        let view = RunView {
            id,
            agent,
            topic,
            status: RunStatus::Pending,
            created_at: OffsetDateTime::now_utc(),
            finished_at: None,
            progress: None,
            detail: None,
            output: RenderedPayload::default(),
            stats: None,
        };
        self.insert(origin, view, Vec::new())
    }

    /// Brings back a command recorded before the server restarted, with the events its view
    /// implies (the progress and log lines of before the restart are not kept on disk).
    pub(crate) fn restore(&self, origin: Origin, view: RunView) -> Arc<RunEntry> {
        let mut events = Vec::new();
        // It was accepted if it runs, or if it ended with the agent's stats.
        if view.status == RunStatus::Running || view.stats.is_some() {
            events.push(RunEvent::Accepted {
                at: view.created_at,
            });
        }
        if let (true, Some(at)) = (view.status.is_final(), view.finished_at) {
            events.push(RunEvent::Finished {
                at,
                status: view.status,
                detail: view.detail.clone(),
                output: view.output.clone(),
                stats: view.stats.clone(),
            });
        }
        self.insert(origin, view, events)
    }

    fn insert(&self, origin: Origin, view: RunView, events: Vec<RunEvent>) -> Arc<RunEntry> {
        let id = view.id.clone();
        let mut log = EventLog::new(RUN_EVENTS);
        for event in events {
            log.push(event);
        }
        let count = log.added();
        let entry = Arc::new(RunEntry {
            origin,
            record: Mutex::new(Record { view, events: log }),
            changed: watch::Sender::new(count),
            cancel: Notify::new(),
            driver: Mutex::new(None),
        });
        let mut inner = self.inner.lock();
        inner.by_id.insert(id.clone(), entry.clone());
        inner.order.push_back(id);
        // Forget the oldest ended commands past the limit; running ones are never dropped.
        while inner.order.len() > RETAINED_COMMANDS {
            let Some(oldest) = inner.order.front().cloned() else {
                break;
            };
            let ended = inner
                .by_id
                .get(&oldest)
                .is_none_or(|e| e.view().status.is_final());
            if !ended {
                break;
            }
            inner.order.pop_front();
            inner.by_id.remove(&oldest);
        }
        entry
    }

    /// One command.
    pub fn get(&self, id: &str) -> Option<Arc<RunEntry>> {
        self.inner.lock().by_id.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_after_the_result_are_dropped_and_wait_returns() {
        let store = RunStore::default();
        let origin = Origin {
            fleet: "f".into(),
            index: 0,
            timeout_ms: None,
        };
        let entry = store.create("c1".into(), "a".into(), "echo".into(), origin);
        entry.accepted();
        entry.progress(150, "clamped".into());
        entry.finish_unrecorded(RunStatus::Lost, "gone".into());
        entry.log(LogLevel::Info, "late".into());
        let view = entry.wait().await;
        assert_eq!(view.status, RunStatus::Lost);
        assert_eq!(view.progress, Some(100));
        assert_eq!(entry.events_since(0).len(), 3);
    }

    #[tokio::test]
    async fn a_run_keeps_the_newest_log_lines_its_acceptance_and_its_end() {
        let store = RunStore::default();
        let origin = Origin {
            fleet: "f".into(),
            index: 0,
            timeout_ms: None,
        };
        let entry = store.create("c1".into(), "a".into(), "echo".into(), origin);
        entry.accepted();
        for i in 0..RUN_EVENTS + 500 {
            entry.log(LogLevel::Info, format!("line {i}"));
        }
        entry.finish_unrecorded(RunStatus::Failed, "done".into());
        let events = entry.events_since(0);
        assert_eq!(events.len(), RUN_EVENTS + 2);
        assert!(matches!(events[0], RunEvent::Accepted { .. }));
        assert!(matches!(&events[1], RunEvent::Log { message, .. } if message == "line 500"));
        assert!(matches!(events.last(), Some(RunEvent::Finished { .. })));
        assert_eq!(entry.events_dropped(), 500);
    }
}
