//! Commands as operators send them: one topic and payload for one agent, a list, the agents a
//! label selector matches, or all of them. Each command fans out into one child
//! [`RunEntry`] per agent (each over its own stream, as the transport delivers it: `ports::Deliver`).
//!
//! The server does the fan-out, honouring two limits, as fleet operators know them from SSM:
//! - `max_concurrency`: at most this many agents run the command at once; the next agent is sent
//!   it only when one has finished;
//! - `max_errors`: once this many agents have failed (failed, crashed, timed out, lost…), no
//!   more are sent it; the agents left are `undelivered`, with the reason.
//!
//! Agents that are offline when their turn comes are `undelivered` too, and do not count as
//! errors: they never ran it. After a server restart, the agents a restored command has not
//! been sent yet are waited for up to `restart_grace` first: the restart cut them off.
//! Cancelling a command stops the sending (the agents left are `cancelled`) and cancels every
//! child still running.
//!
//! Like child commands, a command keeps its events in order — the children's, tagged with the
//! agent, plus `dispatched` and a final `done` — so a watcher that joins late misses nothing it
//! keeps: every event but log and progress, and the newest `COMMAND_EVENTS` (1,000) of those,
//! with a count of those dropped (`domain::events`); a follower is told how many it missed.
//!
//! Who is sent it when, what is decided not sent, and when the command ends is decided by
//! [`ferry_lifecycle::Fanout`]; `drive` here only carries out what it asks (checks an agent
//! and starts its run, passes a cancel on, writes decisions and the end, shows them) and
//! tells it when a run has ended, a write finished or an operator cancelled.
//!
//! A `CommandEntry` has a `Target` (`Agents(ids)` or `Selector`, `all` included), one slot per agent
//! in sending order, and its own event log (`dispatched`, the children's
//! `accepted`/`progress`/`log`/`finished` with `agent` added, and a last `done` with the summary).
//! The driver checks an agent when the machine asks to start it (an invalid or revoked id, or not
//! connected when it may not wait, is unreachable), creates its run and delivery, writes decisions
//! and the end, shows them when the machine says, and passes cancels on. A `follow` task per run
//! copies the child's events and, on its `finished`, tells the machine, so the next agent is never
//! sent the command early. `peak_concurrency` is the machine's count of the most runs at once.
//!
//! A command for exactly one named agent that is not connected is refused (409) rather than
//! recorded as undelivered: the operator asked for that agent and learns at once. With
//! `deliver_within`, an agent that is not connected is waited for (its run is created and its
//! delivery waits for the connection), a command for one named agent is accepted instead of
//! refused, and a waiting agent holds its place in the concurrency window. Selectors match
//! effective labels (`AgentOverrides`) and skip revoked agents.
//!
//! An `idempotency_key` used before returns the first command (API: 200 instead of 202), and agents
//! get the key too; submissions with a key take turns (`CommandStore`'s `keyed` lock) from the key's
//! look-up to the command being stored, so concurrent ones return one command. A command for one
//! named agent without a key is sent while its record is written (command and run in one
//! transaction); the API answers once that is durable, or, on a topic the agent reported read-only,
//! without waiting for it (`CommandEntry`'s `durable` flag, `Delivery::durable`). The newest
//! `RETAINED_FLEETS` (2,000) ended commands are kept, in memory and on disk. `Server::submit` (one
//! agent) goes through the same path and returns the child.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ferry_lifecycle::fanout::{self, Effect, Fanout, Input, Restored, Verdict};
use ferry_protocol::{AgentId, Command};
use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tokio_util::task::TaskTracker;

use super::events::{COMMAND_EVENTS, Droppable, EventLog, Since};

impl Droppable for CommandEvent {
    fn droppable(&self) -> bool {
        matches!(
            self,
            CommandEvent::Log { .. } | CommandEvent::Progress { .. } | CommandEvent::Dropped { .. }
        )
    }
}

pub use ferry_api::{AgentResult, CommandEvent, CommandStatus, CommandView, Summary};

use super::agents::NotConnected;
use super::plugins::Selector;
use super::ports::{AgentOverrides, CommandLog, Deliver, Delivery, Directory};
use super::records::{
    COMMAND_LAYOUT, CommandRecord, Created, Loaded, NotSent, RunRecord, SlotRecord, TargetRecord,
};
use super::runs::{Origin, RenderedPayload, RunEntry, RunEvent, RunStatus, RunStore};
use ferry_api::names;

/// The operator's commands: the ones the server holds, and what starting, driving and
/// restoring them needs of the rest of the server, as the composition root wires it.
pub(crate) struct Commands {
    pub(crate) settings: Settings,
    /// Every command the server holds.
    pub(crate) store: CommandStore,
    /// Every agent's run of them.
    pub(crate) runs: Arc<RunStore>,
    pub(crate) agents: Arc<dyn Directory>,
    pub(crate) overrides: Arc<dyn AgentOverrides>,
    pub(crate) log: Arc<dyn CommandLog>,
    pub(crate) deliver: Arc<dyn Deliver>,
    /// Where fan-outs and followers run; shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the server stops: fan-outs end where they are (it is on disk).
    pub(crate) stop: CancellationToken,
}

/// The server's settings commands are made with.
pub(crate) struct Settings {
    /// A command's timeout when its request sets none.
    pub(crate) default_timeout: Duration,
    /// How long restored commands wait for their agents to reconnect after a restart.
    pub(crate) restart_grace: Duration,
    /// The largest frame the server sends; a payload must fit in one with its envelope.
    pub(crate) max_frame_bytes: u32,
}

/// A command could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The agent is not connected.
    #[error(transparent)]
    NotConnected(#[from] NotConnected),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A selector matched no agent.
    #[error("{0}")]
    NoTargets(String),
    /// The command could not be recorded on disk, so it was not started.
    #[error("the server could not record the command: {0}; check its data directory's disk")]
    Storage(String),
}

/// The longest topic, and the longest content type, a command may name.
pub const MAX_TOPIC_BYTES: usize = 128;
/// The longest data key a command may carry.
pub const MAX_DATA_KEY_BYTES: usize = 256;
/// The most agents one command may name (a selector reaches any number).
pub const MAX_TARGETS: usize = 10_000;
/// The longest timeout, and the longest delivery window, a command may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Checks what every agent's copy of a command would need, and that every input is within
/// its bound: a request past one is refused whole, before anything is held for it.
fn check_request(max_frame_bytes: u32, request: &CommandRequest) -> Result<(), SubmitError> {
    let invalid = |what: &str, why: String| Err(SubmitError::Invalid(format!("{what}: {why}")));
    if let Err(why) = names::check(&request.topic, MAX_TOPIC_BYTES, false) {
        return invalid("the topic cannot be used", why);
    }
    if let Err(why) = names::check(&request.content_type, MAX_TOPIC_BYTES, true) {
        return invalid("the content type cannot be used", why);
    }
    for key in request.data.keys() {
        if let Err(why) = names::check(key, MAX_DATA_KEY_BYTES, false) {
            return invalid("a data key cannot be used", why);
        }
    }
    if let Some(key) = &request.idempotency_key
        && let Err(why) = names::check(key, 256, true)
    {
        return invalid("the idempotency key cannot be used", why);
    }
    if let Target::Agents(ids) = &request.target
        && ids.len() > MAX_TARGETS
    {
        return invalid(
            "too many agents",
            format!(
                "the command names {}; at most {MAX_TARGETS} may be named, or target them by label with a selector",
                ids.len()
            ),
        );
    }
    for (what, wait) in [
        ("timeout", request.timeout),
        ("deliver_within", request.deliver_within),
    ] {
        if wait.is_some_and(|w| w > MAX_WAIT) {
            return invalid(
                &format!("the {what} is too long"),
                format!("at most {} days", MAX_WAIT.as_secs() / 86_400),
            );
        }
    }
    let payload_len = request.payload.len();
    if payload_len as u64 + 1024 > u64::from(max_frame_bytes) {
        return Err(SubmitError::Invalid(format!(
            "the payload has {payload_len} bytes; the limit is {max_frame_bytes} bytes (max_frame_bytes) minus 1 KiB for the envelope"
        )));
    }
    Ok(())
}

/// Which agents a command is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// These agents, by id (one, or a list).
    Agents(Vec<AgentId>),
    /// The agents whose labels (their own, with the operator's merged over them) match;
    /// [`Selector::all`] is every agent. Revoked agents are never selected.
    Selector(Selector),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Agents(ids) => {
                let ids: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
                write!(f, "{}", ids.join(","))
            }
            Target::Selector(s) if *s == Selector::all() => f.write_str("all"),
            Target::Selector(s) => write!(f, "{s}"),
        }
    }
}

/// A command for one or many agents.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// Where.
    pub target: Target,
    /// The topic.
    pub topic: String,
    /// The plugin's input, the same for every agent.
    pub payload: Vec<u8>,
    /// How `payload` is encoded.
    pub content_type: String,
    /// How long it may run on each agent; the server's default when `None`.
    pub timeout: Option<Duration>,
    /// An idempotency key, the same for every agent (each agent keeps its own).
    pub idempotency_key: Option<String>,
    /// Data the plugin may ask for by key while it runs.
    pub data: BTreeMap<String, Vec<u8>>,
    /// How many agents run it at once; all at once when `None`.
    pub max_concurrency: Option<u32>,
    /// Stop sending once this many agents have failed; never when `None`.
    pub max_errors: Option<u32>,
    /// How long an agent that is not connected may be waited for before it is `undelivered`;
    /// not at all when `None` (and then a command for one named agent that is not connected
    /// is refused at once).
    pub deliver_within: Option<Duration>,
    /// Who asked (a token's name), for the record.
    pub created_by: String,
}

/// What `ferry commands --status` selects: a command's own status, or, for a status only a
/// run has (`timed-out`, `crashed`, …), the commands with a run that ended so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// The command's own status.
    Command(CommandStatus),
    /// At least one of its runs is in this status.
    Run(RunStatus),
}

impl StatusFilter {
    /// Parses a status name: a command's first (`failed` is the command's), then a run's.
    pub fn parse(s: &str) -> Result<StatusFilter, String> {
        if let Some(status) = CommandStatus::parse(s) {
            return Ok(StatusFilter::Command(status));
        }
        if let Some(status) = RunStatus::ALL.iter().find(|r| r.name() == s) {
            return Ok(StatusFilter::Run(*status));
        }
        let mut names: Vec<&str> = CommandStatus::ALL.iter().map(|f| f.name()).collect();
        for run in RunStatus::ALL {
            if !names.contains(&run.name()) {
                names.push(run.name());
            }
        }
        Err(format!(
            "status '{s}' is none of {} (a command's status, or one its runs ended in)",
            names.join(", ")
        ))
    }
}

/// An agent's place in a command.
struct Slot {
    agent: String,
    entry: Option<Arc<RunEntry>>,
    /// How many of the run's events are in the command's log already (restored runs).
    copied: usize,
    /// Why it was never sent, and when that was decided.
    not_sent: Option<(RunStatus, String, OffsetDateTime)>,
}

impl Slot {
    fn status(&self) -> RunStatus {
        match (&self.entry, &self.not_sent) {
            (Some(entry), _) => entry.view().status,
            (None, Some((status, _, _))) => *status,
            (None, None) => RunStatus::Pending,
        }
    }

    fn result(&self) -> AgentResult {
        match (&self.entry, &self.not_sent) {
            (Some(entry), _) => {
                let view = entry.view();
                AgentResult {
                    agent: self.agent.clone(),
                    agent_command_id: Some(view.id),
                    status: view.status,
                    progress: view.progress,
                    detail: view.detail,
                    output: view.output,
                    stats: view.stats,
                    sent_at: Some(view.created_at),
                    finished_at: view.finished_at,
                    events_dropped: entry.events_dropped() as u64,
                }
            }
            (None, not_sent) => AgentResult {
                agent: self.agent.clone(),
                agent_command_id: None,
                status: not_sent.as_ref().map_or(RunStatus::Pending, |(s, _, _)| *s),
                progress: None,
                detail: not_sent.as_ref().map(|(_, why, _)| why.clone()),
                output: RenderedPayload::default(),
                stats: None,
                sent_at: None,
                finished_at: not_sent.as_ref().map(|(_, _, at)| *at),
                events_dropped: 0,
            },
        }
    }
}

struct Inner {
    slots: Vec<Slot>,
    /// Its events, in order, log and progress bounded.
    events: EventLog<CommandEvent>,
    /// Runs' events that the runs dropped before the command copied them.
    skipped: usize,
    finished_at: Option<OffsetDateTime>,
    /// `Running` until the end is shown.
    status: CommandStatus,
    /// The most runs in flight at once, as the fan-out counts them.
    peak: u32,
}

/// A run to follow: its slot, its entry, and how many of its events the command has already.
type Going = (usize, Arc<RunEntry>, usize);

/// A command for one or many agents.
pub struct CommandEntry {
    id: String,
    request: Arc<CommandRequest>,
    topic: String,
    target: String,
    created_by: String,
    created_at: OffsetDateTime,
    max_concurrency: Option<u32>,
    max_errors: Option<u32>,
    inner: Mutex<Inner>,
    changed: watch::Sender<usize>,
    cancel: CancellationToken,
    /// Set when the command was restored after a server restart: the agents still due their
    /// copy were cut off by the restart, not gone, so each is waited for until then (at least)
    /// instead of being `undelivered` for not having reconnected yet.
    reconnect_grace_until: Option<Instant>,
    /// False for a read-only topic's command on one agent: it is recorded without waiting for
    /// the disk (a crash may forget it; running it again is harmless, by its manifest's word).
    durable: bool,
}

impl CommandEntry {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The command as stored on disk.
    pub(crate) fn record(&self) -> CommandRecord {
        let finished_at = self.inner.lock().finished_at;
        self.record_as(finished_at, self.cancel.is_cancelled())
    }

    /// The command as stored on disk, ended at `finished_at` (before that is shown).
    fn record_as(&self, finished_at: Option<OffsetDateTime>, cancelled: bool) -> CommandRecord {
        let inner = self.inner.lock();
        let request = &self.request;
        CommandRecord {
            layout: COMMAND_LAYOUT,
            id: self.id.clone(),
            topic: self.topic.clone(),
            target: match &request.target {
                Target::Agents(ids) => {
                    TargetRecord::Agents(ids.iter().map(|id| id.to_string()).collect())
                }
                Target::Selector(selector) => TargetRecord::Selector(selector.to_string()),
            },
            payload: request.payload.clone(),
            content_type: request.content_type.clone(),
            timeout_ms: request.timeout.map(|t| t.as_millis() as u64),
            idempotency_key: request.idempotency_key.clone(),
            data: request
                .data
                .iter()
                .map(|(k, v)| (k.clone(), serde_bytes::ByteBuf::from(v.clone())))
                .collect(),
            max_concurrency: self.max_concurrency,
            max_errors: self.max_errors,
            deliver_within_ms: request.deliver_within.map(|d| d.as_millis() as u64),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            slots: inner
                .slots
                .iter()
                .map(|slot| SlotRecord {
                    agent: slot.agent.clone(),
                    not_sent: slot.not_sent.as_ref().map(|(status, why, at)| NotSent {
                        status: *status,
                        why: why.clone(),
                        at: *at,
                    }),
                })
                .collect(),
            finished_at,
            cancelled,
            peak: inner.peak,
        }
    }

    /// The child command sent to the agent at `index` (in sending order), once sent.
    pub fn child(&self, index: usize) -> Option<Arc<RunEntry>> {
        self.inner.lock().slots.get(index)?.entry.clone()
    }

    /// Has it ended, every agent done?
    pub fn is_finished(&self) -> bool {
        self.inner.lock().finished_at.is_some()
    }

    /// Its current view, with each agent's result when `results`.
    pub fn view(&self, results: bool) -> CommandView {
        let inner = self.inner.lock();
        let mut summary = Summary::default();
        let mut list = Vec::new();
        for slot in &inner.slots {
            if results {
                let result = slot.result();
                summary.add(result.status);
                list.push(result);
            } else {
                summary.add(slot.status());
            }
        }
        CommandView {
            id: self.id.clone(),
            topic: self.topic.clone(),
            target: self.target.clone(),
            status: inner.status,
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            finished_at: inner.finished_at,
            max_concurrency: self.max_concurrency,
            max_errors: self.max_errors,
            peak_concurrency: inner.peak,
            summary,
            events_dropped: (inner.events.dropped() + inner.skipped) as u64,
            results: results.then_some(list),
        }
    }

    /// Is one of its runs (or a slot decided not to be sent) in `status`?
    pub fn has_run_in(&self, status: RunStatus) -> bool {
        self.inner.lock().slots.iter().any(|s| s.status() == status)
    }

    /// Did it target `agent`?
    pub fn targets(&self, agent: &str) -> bool {
        self.inner.lock().slots.iter().any(|s| s.agent == agent)
    }

    /// The kept events numbered from `from` on.
    pub fn events_since(&self, from: usize) -> Vec<CommandEvent> {
        self.inner.lock().events.since(from).events
    }

    /// The kept events numbered from `from` on, the number to ask from next, and how many in
    /// between were dropped.
    pub fn events_after(&self, from: usize) -> Since<CommandEvent> {
        self.inner.lock().events.since(from)
    }

    /// A receiver that changes whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// Stops sending it and cancels every agent's run still going; false if it had already
    /// ended.
    pub fn request_cancel(&self) -> bool {
        if self.is_finished() {
            return false;
        }
        self.cancel.cancel();
        true
    }

    /// Waits until every agent is done and returns the final view.
    pub async fn wait(&self) -> CommandView {
        let mut rx = self.subscribe();
        while !self.is_finished() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.view(true)
    }

    fn push_locked(&self, inner: &mut Inner, event: CommandEvent) {
        let added = inner.events.push(event);
        self.changed.send_replace(added);
    }

    /// A run dropped `count` events before they were copied here.
    fn skipped(&self, count: usize) {
        self.inner.lock().skipped += count;
    }

    fn dispatched(&self, index: usize, entry: Arc<RunEntry>) {
        let mut inner = self.inner.lock();
        let agent = inner.slots[index].agent.clone();
        let view = entry.view();
        let id = view.id;
        inner.slots[index].entry = Some(entry);
        self.push_locked(
            &mut inner,
            CommandEvent::Dispatched {
                agent,
                agent_command_id: id,
                at: view.created_at,
            },
        );
    }

    fn not_sent(&self, index: usize, status: RunStatus, why: String, at: OffsetDateTime) {
        let mut inner = self.inner.lock();
        let agent = inner.slots[index].agent.clone();
        inner.slots[index].not_sent = Some((status, why.clone(), at));
        self.push_locked(
            &mut inner,
            CommandEvent::Finished {
                agent,
                at,
                status,
                detail: Some(why),
                output: RenderedPayload::default(),
                stats: None,
            },
        );
    }

    fn agent_event(&self, index: usize, event: &RunEvent) {
        let mut inner = self.inner.lock();
        let agent = inner.slots[index].agent.clone();
        self.push_locked(&mut inner, CommandEvent::of(agent, event.clone()));
    }

    fn set_peak(&self, peak: u32) {
        self.inner.lock().peak = peak;
    }

    /// Puts back a run restored from disk, with its events so far.
    fn restore_run(&self, index: usize, entry: Arc<RunEntry>) {
        let since = entry.events_after(0);
        self.dispatched(index, entry);
        for event in &since.events {
            self.agent_event(index, event);
        }
        self.skipped(since.dropped);
        self.inner.lock().slots[index].copied = since.next;
    }

    /// Where each slot is, as the fan-out starts from it: slots with a run that is going (or
    /// whose events were not copied yet) come back with it, to be followed.
    fn slots_for_fanout(&self) -> (Vec<fanout::Slot>, Vec<Going>) {
        let inner = self.inner.lock();
        let mut follow = Vec::new();
        let slots = inner
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| match (&slot.entry, &slot.not_sent) {
                (Some(entry), _) => {
                    let status = entry.view().status;
                    if slot.copied > 0 && status.is_final() {
                        fanout::Slot::Ended(status)
                    } else {
                        follow.push((index, entry.clone(), slot.copied));
                        fanout::Slot::Running
                    }
                }
                (None, Some((status, _, _))) => fanout::Slot::NotSent(*status),
                (None, None) => fanout::Slot::Unsent,
            })
            .collect();
        (slots, follow)
    }

    /// Shows the end, as recorded.
    fn finish_at(&self, now: OffsetDateTime, verdict: Verdict) {
        let mut inner = self.inner.lock();
        let status = match verdict {
            Verdict::Succeeded => CommandStatus::Succeeded,
            Verdict::Failed => CommandStatus::Failed,
            Verdict::Cancelled => CommandStatus::Cancelled,
        };
        inner.finished_at = Some(now);
        inner.status = status;
        let mut summary = Summary::default();
        for slot in &inner.slots {
            summary.add(slot.status());
        }
        let peak_concurrency = inner.peak;
        self.push_locked(
            &mut inner,
            CommandEvent::Done {
                status,
                summary,
                peak_concurrency,
                at: now,
            },
        );
    }

    /// Shows the end of a command restored after it had ended, as its record says.
    fn finish_restored(&self, at: OffsetDateTime) {
        let statuses: Vec<RunStatus> = self.inner.lock().slots.iter().map(Slot::status).collect();
        self.finish_at(at, Verdict::of(self.cancel.is_cancelled(), statuses));
    }
}

/// Which agents `target` means now, in sending order, with the single agent's connection
/// checked when it names one agent.
fn resolve(cx: &Commands, target: &Target) -> Result<Vec<String>, SubmitError> {
    match target {
        Target::Agents(ids) => {
            let mut seen = std::collections::HashSet::new();
            let ids: Vec<String> = ids
                .iter()
                .filter(|id| seen.insert(id.as_str().to_string()))
                .map(|id| id.to_string())
                .collect();
            if ids.is_empty() {
                return Err(SubmitError::Invalid(
                    "no agents named: give at least one agent id".into(),
                ));
            }
            Ok(ids)
        }
        Target::Selector(selector) => {
            let ids: Vec<String> = cx
                .agents
                .agents()
                .into_iter()
                .filter(|a| !cx.overrides.is_revoked(&a.id))
                .filter(|a| selector.matches(&cx.overrides.effective_labels(&a.id, &a.labels)))
                .map(|a| a.id)
                .collect();
            if ids.is_empty() {
                return Err(SubmitError::NoTargets(format!(
                    "no agent matches '{}'; `ferry agents` lists the agents and their labels",
                    Target::Selector(selector.clone())
                )));
            }
            Ok(ids)
        }
    }
}

/// Starts a command. A command for exactly one named agent is refused at once when that agent
/// is not connected and the command may not wait for it (nothing would run); for several,
/// such agents are `undelivered`. The command is on disk before this returns. A command whose
/// idempotency key was used before is not started again: the first one is returned, with
/// `false`.
pub(crate) async fn start(
    cx: &Arc<Commands>,
    request: CommandRequest,
) -> Result<(Arc<CommandEntry>, bool), SubmitError> {
    if request.max_concurrency == Some(0) {
        return Err(SubmitError::Invalid(
            "max_concurrency must be at least 1; leave it out to send to every agent at once"
                .into(),
        ));
    }
    if request.max_errors == Some(0) {
        return Err(SubmitError::Invalid(
            "max_errors must be at least 1 (stop once that many agents failed); leave it out to never stop"
                .into(),
        ));
    }
    // Submissions with an idempotency key go one at a time, from the key's look-up to the
    // command in the store, so the second of two at once finds the first; the key is also
    // claimed in the transaction that records the command (`create_command`), so no two
    // commands are ever recorded under one key.
    let _keyed = match &request.idempotency_key {
        Some(key) => {
            if key.is_empty() || key.len() > 256 {
                return Err(SubmitError::Invalid(
                    "idempotency_key must have 1 to 256 bytes".into(),
                ));
            }
            let turn = cx.store.keyed.lock().await;
            if let Some(existing) = cx.log.command_for_key(key).and_then(|id| cx.store.get(&id)) {
                return Ok((existing, false));
            }
            Some(turn)
        }
        None => None,
    };
    check_request(cx.settings.max_frame_bytes, &request)?;
    let agents = resolve(cx, &request.target)?;
    let single = match (&request.target, agents.as_slice()) {
        (Target::Agents(_), [one]) => {
            let id = AgentId::new(one.clone()).map_err(|e| SubmitError::Invalid(e.to_string()))?;
            if request.deliver_within.is_none() {
                cx.agents.connected(&id)?;
            }
            Some(id)
        }
        _ => None,
    };
    // A read-only topic (as the agent reported it) needs no fsync on the server either: the
    // agent runs it without its journal, so a record that outlived a crash would not make it
    // run any less often.
    let durable = !single.as_ref().is_some_and(|agent| {
        request.idempotency_key.is_none() && cx.agents.is_read_only(agent, &request.topic)
    });
    let id = uuid::Uuid::new_v4().to_string();
    let fleet = Arc::new(CommandEntry {
        durable,
        id: id.clone(),
        topic: request.topic.clone(),
        target: request.target.to_string(),
        created_by: request.created_by.clone(),
        created_at: OffsetDateTime::now_utc(),
        max_concurrency: request.max_concurrency,
        max_errors: request.max_errors,
        request: Arc::new(request),
        inner: Mutex::new(Inner {
            slots: agents
                .into_iter()
                .map(|agent| Slot {
                    agent,
                    entry: None,
                    copied: 0,
                    not_sent: None,
                })
                .collect(),
            events: EventLog::new(COMMAND_EVENTS),
            skipped: 0,
            finished_at: None,
            status: CommandStatus::Running,
            peak: 0,
        }),
        changed: watch::Sender::new(0),
        cancel: CancellationToken::new(),
        reconnect_grace_until: None,
    });
    // A command for one named agent without an idempotency key is sent while it is recorded:
    // the command and its run are written in one transaction, and the API answers once that
    // is on disk. A crash before then loses both records, but nothing acknowledged: the
    // operator never got the command's id, and the agent answers a copy sent again (by id, or
    // by idempotency key) from its journal. A key must be claimed before anything is sent, and
    // a fan-out records each run before sending it, so both wait for the command's record.
    // The one agent is sent it before the fan-out exists (which finds its slot running), so
    // its deadline is the one the fan-out gives a new command's runs.
    let deliver_by = Instant::now() + fleet.request.deliver_within.unwrap_or_default();
    let overlapped = match (&single, fleet.request.idempotency_key.is_some()) {
        (Some(agent), false) => {
            let (entry, delivery) = new_run(cx, &fleet, 0, agent, deliver_by, true);
            let run = RunRecord::new(entry.origin().clone(), entry.view());
            let recorded = cx
                .log
                .create_command(&fleet.record(), Some(&run), fleet.durable);
            cx.deliver.deliver(delivery);
            fleet.dispatched(0, entry.clone());
            Some((entry, recorded))
        }
        _ => None,
    };
    match overlapped {
        // A read-only topic's record is not waited for: nothing is promised about it after a
        // crash, and the write queue keeps it ahead of the run's end.
        Some((_, recorded)) if !fleet.durable => {
            let id = fleet.id.clone();
            cx.tasks.spawn(async move {
                if let Err(e) = recorded.await {
                    tracing::warn!(command = %id, error = %e, "cannot record a read-only topic's command");
                }
            });
        }
        Some((entry, recorded)) => {
            if let Err(e) = recorded.await {
                entry.request_cancel();
                return Err(SubmitError::Storage(format!(
                    "{e} (the command was cancelled, but may have reached the agent already)"
                )));
            }
        }
        None => {
            match cx.log.create_command(&fleet.record(), None, true).await {
                Ok(Created::New) => {}
                Ok(Created::Existing(holder)) => {
                    return cx.store.get(&holder).map(|f| (f, false)).ok_or_else(|| {
                        SubmitError::Storage(format!(
                            "the idempotency key belongs to command {holder}, which this server no longer holds in memory; use another key"
                        ))
                    });
                }
                Err(e) => return Err(SubmitError::Storage(e.to_string())),
            }
            // One named agent is sent its copy before the command is returned, so that
            // `Server::submit` can hand out the agent's run at once.
            if let Some(agent) = single {
                let entry = send_to(cx, &fleet, 0, &agent, deliver_by);
                fleet.dispatched(0, entry);
            }
        }
    }
    cx.store.insert(fleet.clone());
    cx.tasks.spawn(drive(cx.clone(), fleet.clone()));
    Ok((fleet, true))
}

/// Creates agent `agent`'s run of `fleet` (slot `index`) and starts its delivery, which records
/// the run and waits for the agent within the command's delivery window.
fn send_to(
    cx: &Arc<Commands>,
    fleet: &CommandEntry,
    index: usize,
    agent: &AgentId,
    deliver_by: Instant,
) -> Arc<RunEntry> {
    let (entry, delivery) = new_run(cx, fleet, index, agent, deliver_by, false);
    cx.deliver.deliver(delivery);
    entry
}

/// Agent `agent`'s run of `fleet` (slot `index`), and its delivery, not started yet;
/// `recorded`: the caller writes the run's record itself (queued before the delivery starts).
fn new_run(
    cx: &Arc<Commands>,
    fleet: &CommandEntry,
    index: usize,
    agent: &AgentId,
    deliver_by: Instant,
    recorded: bool,
) -> (Arc<RunEntry>, Delivery) {
    let request = &fleet.request;
    let timeout = request.timeout.unwrap_or(cx.settings.default_timeout);
    let timeout_ms = Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64);
    let run_id = uuid::Uuid::new_v4().to_string();
    let origin = Origin {
        fleet: fleet.id.clone(),
        index: index as u32,
        timeout_ms,
    };
    let entry = cx.runs.create(
        run_id.clone(),
        agent.to_string(),
        request.topic.clone(),
        origin,
    );
    let delivery = Delivery {
        entry: entry.clone(),
        agent: agent.clone(),
        command: command_for(request, run_id, timeout_ms),
        data: request.data.clone(),
        deliver_by,
        sent_at: None,
        recorded,
        durable: fleet.durable,
    };
    (entry, delivery)
}

fn command_for(request: &CommandRequest, id: String, timeout_ms: Option<u64>) -> Command {
    Command {
        id,
        topic: request.topic.clone(),
        payload: request.payload.clone(),
        content_type: request.content_type.clone(),
        timeout_ms,
        idempotency_key: request.idempotency_key.clone(),
    }
}

/// Drives the command's [`Fanout`] until it has ended: agents already decided (restored after
/// a server restart) are skipped, runs already sent (the one agent's, or restored runs still
/// going) are followed, the others are sent it as the machine says.
async fn drive(cx: Arc<Commands>, fleet: Arc<CommandEntry>) {
    let stop = cx.stop.clone();
    tokio::select! {
        _ = run_fanout(cx, fleet) => {}
        // Where it was is on disk: the restarted server carries on from there.
        _ = stop.cancelled() => {}
    }
}

async fn run_fanout(cx: Arc<Commands>, fleet: Arc<CommandEntry>) {
    let now = || Instant::now().into_std();
    let limits = fanout::Limits {
        max_concurrency: fleet.max_concurrency,
        max_errors: fleet.max_errors,
        deliver_within: fleet.request.deliver_within,
    };
    let (slots, going) = fleet.slots_for_fanout();
    let mut machine = match fleet.reconnect_grace_until {
        Some(until) => Fanout::restore(
            now(),
            limits,
            slots,
            Restored {
                grace_until: until.into_std(),
                peak: fleet.inner.lock().peak,
                cancelled: fleet.cancel.is_cancelled(),
            },
        ),
        None => Fanout::new(now(), limits, slots),
    };
    fleet.set_peak(machine.peak());
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    for (index, entry, from) in going {
        cx.tasks
            .spawn(follow(fleet.clone(), index, entry, from, ended_tx.clone()));
    }
    let mut cancel_told = false;
    // When the decision or the end being written was made: what is shown once it is on disk.
    let mut decided_at = OffsetDateTime::now_utc();
    let mut ended_at = decided_at;
    loop {
        while let Some(effect) = machine.poll() {
            match effect {
                Effect::Start {
                    slot,
                    deliver_by,
                    may_wait,
                } => {
                    let agent = fleet.inner.lock().slots[slot].agent.clone();
                    let input = match reach(&cx, &agent, may_wait) {
                        Ok(id) => {
                            let entry =
                                send_to(&cx, &fleet, slot, &id, Instant::from_std(deliver_by));
                            fleet.dispatched(slot, entry.clone());
                            cx.tasks
                                .spawn(follow(fleet.clone(), slot, entry, 0, ended_tx.clone()));
                            Input::Started(slot)
                        }
                        Err(why) => Input::Unreachable(slot, why),
                    };
                    machine.handle(now(), input);
                    fleet.set_peak(machine.peak());
                }
                Effect::CancelRun(slot) => {
                    if let Some(entry) = fleet.child(slot) {
                        entry.request_cancel();
                    }
                }
                Effect::RecordNotSent(decision) => {
                    decided_at = OffsetDateTime::now_utc();
                    let records = decision
                        .slots
                        .iter()
                        .map(|&i| {
                            let not_sent = NotSent {
                                status: decision.status,
                                why: decision.why.clone(),
                                at: decided_at,
                            };
                            (i as u32, not_sent)
                        })
                        .collect();
                    let written = cx.log.save_not_sent(&fleet.id, records).await;
                    if let Err(e) = &written {
                        tracing::error!(command = %fleet.id, error = %e, "cannot record the agents a command is not sent to; trying again");
                    }
                    machine.handle(
                        now(),
                        Input::NotSentRecorded(written.map_err(|e| e.to_string())),
                    );
                }
                Effect::NotSent(decision) => {
                    for slot in decision.slots {
                        fleet.not_sent(slot, decision.status, decision.why.clone(), decided_at);
                    }
                }
                Effect::RecordEnd(verdict) => {
                    ended_at = OffsetDateTime::now_utc();
                    let record = fleet.record_as(Some(ended_at), verdict == Verdict::Cancelled);
                    let written = cx.log.save_command(&record, fleet.durable).await;
                    if let Err(e) = &written {
                        tracing::error!(command = %fleet.id, error = %e, "cannot record that the command ended; trying again");
                    }
                    machine.handle(
                        now(),
                        Input::EndRecorded(written.map_err(|e| e.to_string())),
                    );
                }
                Effect::Ended(verdict) => {
                    fleet.finish_at(ended_at, verdict);
                    tracing::info!(command = %fleet.id, view = ?fleet.view(false).summary, "command ended");
                }
            }
        }
        if machine.is_ended() {
            return;
        }
        let deadline = machine.poll_timeout().map(Instant::from_std);
        tokio::select! {
            Some((slot, status)) = ended.recv() => machine.handle(now(), Input::RunEnded(slot, status)),
            _ = fleet.cancel.cancelled(), if !cancel_told => {
                cancel_told = true;
                machine.handle(now(), Input::Cancel);
            }
            _ = sleep_until_opt(deadline) => machine.handle(now(), Input::Timeout),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Agent `agent`, if it may be sent the command now: a valid id, not revoked, and connected
/// unless it `may_wait` for it; else why it is not sent.
fn reach(cx: &Commands, agent: &str, may_wait: bool) -> Result<AgentId, String> {
    match AgentId::new(agent.to_string()) {
        Ok(id) if cx.overrides.is_revoked(agent) => {
            Err(format!("not sent: agent '{id}' is revoked"))
        }
        Ok(id) if !may_wait && cx.agents.connected(&id).is_err() => {
            Err(format!("not sent: {}", NotConnected(id.to_string())))
        }
        Ok(id) => Ok(id),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies one agent's events into the command's, from event number `from`, and tells the
/// fan-out once the run has ended (after its `finished` is copied, so the next agent is sent
/// it only then).
async fn follow(
    fleet: Arc<CommandEntry>,
    index: usize,
    entry: Arc<RunEntry>,
    from: usize,
    ended: mpsc::UnboundedSender<(usize, RunStatus)>,
) {
    let mut rx = entry.subscribe();
    let mut next = from;
    loop {
        let since = entry.events_after(next);
        next = since.next;
        if since.dropped > 0 {
            fleet.skipped(since.dropped);
        }
        for event in &since.events {
            fleet.agent_event(index, event);
            if let RunEvent::Finished { status, .. } = event {
                let _ = ended.send((index, *status));
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Brings back the commands of an earlier run of the server: ended ones as they ended, and
/// the others where they were: runs sent before the restart are sent again under the same id
/// (the agent's journal answers without running them twice), agents not sent it yet are sent
/// it within the command's limits.
pub(crate) fn restore(cx: &Arc<Commands>, loaded: Loaded) {
    let mut runs: HashMap<String, Vec<RunRecord>> = HashMap::new();
    for run in loaded.runs {
        runs.entry(run.origin.fleet.clone()).or_default().push(run);
    }
    let (mut ended, mut resumed) = (0, 0);
    for record in loaded.commands {
        let target = match &record.target {
            TargetRecord::Agents(ids) => {
                match ids.iter().map(AgentId::new).collect::<Result<Vec<_>, _>>() {
                    Ok(ids) => Target::Agents(ids),
                    Err(e) => {
                        tracing::warn!(command = %record.id, error = %e, "skipping a stored command with a bad target");
                        continue;
                    }
                }
            }
            TargetRecord::Selector(text) => match text.parse::<Selector>() {
                Ok(selector) => Target::Selector(selector),
                Err(e) => {
                    tracing::warn!(command = %record.id, error = %e, "skipping a stored command with a bad selector");
                    continue;
                }
            },
        };
        let request = CommandRequest {
            target,
            topic: record.topic.clone(),
            payload: record.payload,
            content_type: record.content_type,
            timeout: record.timeout_ms.map(Duration::from_millis),
            idempotency_key: record.idempotency_key,
            data: record
                .data
                .into_iter()
                .map(|(k, v)| (k, v.into_vec()))
                .collect(),
            max_concurrency: record.max_concurrency,
            max_errors: record.max_errors,
            deliver_within: record.deliver_within_ms.map(Duration::from_millis),
            created_by: record.created_by.clone(),
        };
        let fleet = Arc::new(CommandEntry {
            id: record.id.clone(),
            target: request.target.to_string(),
            request: Arc::new(request),
            topic: record.topic,
            created_by: record.created_by,
            created_at: record.created_at,
            max_concurrency: record.max_concurrency,
            max_errors: record.max_errors,
            inner: Mutex::new(Inner {
                slots: record
                    .slots
                    .into_iter()
                    .map(|slot| Slot {
                        agent: slot.agent,
                        entry: None,
                        copied: 0,
                        not_sent: slot.not_sent.map(|n| (n.status, n.why, n.at)),
                    })
                    .collect(),
                events: EventLog::new(COMMAND_EVENTS),
                skipped: 0,
                finished_at: None,
                status: CommandStatus::Running,
                peak: record.peak,
            }),
            changed: watch::Sender::new(0),
            cancel: CancellationToken::new(),
            reconnect_grace_until: Some(Instant::now() + cx.settings.restart_grace),
            durable: true,
        });
        if record.cancelled {
            fleet.cancel.cancel();
        }
        let mut fleet_runs = runs.remove(&fleet.id).unwrap_or_default();
        fleet_runs.sort_by_key(|r| r.origin.index);
        for run in fleet_runs {
            let index = run.origin.index as usize;
            if index >= fleet.inner.lock().slots.len() {
                continue;
            }
            let timeout_ms = run.origin.timeout_ms;
            let (origin, view) = run.into_parts();
            let entry = cx.runs.restore(origin, view);
            fleet.restore_run(index, entry.clone());
            let view = entry.view();
            if view.status.is_final() {
                continue;
            }
            let Ok(agent) = AgentId::new(view.agent.clone()) else {
                continue;
            };
            // Sent before the restart (its record is written before the Command leaves).
            cx.deliver.deliver(Delivery {
                entry: entry.clone(),
                agent,
                command: command_for(&fleet.request, view.id, timeout_ms),
                data: fleet.request.data.clone(),
                deliver_by: Instant::now() + fleet.request.deliver_within.unwrap_or_default(),
                // Its deadlines run from when it was first sent, not from the restart: a result
                // the agent kept while the server was down is still taken within `result_wait`.
                sent_at: Some(instant_of(view.created_at)),
                recorded: true,
                durable: true,
            });
        }
        cx.store.insert(fleet.clone());
        match record.finished_at {
            Some(at) => {
                fleet.finish_restored(at);
                ended += 1;
            }
            None => {
                cx.tasks.spawn(drive(cx.clone(), fleet));
                resumed += 1;
            }
        }
    }
    if ended + resumed > 0 {
        tracing::info!(
            ended,
            resumed,
            "commands restored from the server's records"
        );
    }
}

/// The monotonic instant of a wall-clock time in the past (now, if the clock says it is in the
/// future).
fn instant_of(at: OffsetDateTime) -> Instant {
    let now = Instant::now();
    let ago = (OffsetDateTime::now_utc() - at).max(time::Duration::ZERO);
    now.checked_sub(ago.unsigned_abs()).unwrap_or(now)
}

/// How many ended commands the store keeps; each holds its agents' results.
pub const RETAINED_FLEETS: usize = 2_000;

/// What `GET /v1/commands` filters by.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only commands in this state, or with a run in it.
    pub status: Option<StatusFilter>,
    /// Only commands on this topic.
    pub topic: Option<String>,
    /// Only commands that targeted this agent.
    pub agent: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// Every command the server knows, newest last.
#[derive(Default)]
pub(crate) struct CommandStore {
    inner: Mutex<StoreInner>,
    /// Held by a submission with an idempotency key from its look-up to its insertion.
    keyed: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct StoreInner {
    by_id: HashMap<String, Arc<CommandEntry>>,
    order: VecDeque<String>,
}

impl CommandStore {
    fn insert(&self, fleet: Arc<CommandEntry>) {
        let mut inner = self.inner.lock();
        inner.order.push_back(fleet.id.clone());
        inner.by_id.insert(fleet.id.clone(), fleet);
        // Forget the oldest ended commands past the limit; running ones are never dropped.
        while inner.order.len() > RETAINED_FLEETS {
            let Some(oldest) = inner.order.front().cloned() else {
                break;
            };
            if !inner.by_id.get(&oldest).is_none_or(|f| f.is_finished()) {
                break;
            }
            inner.order.pop_front();
            inner.by_id.remove(&oldest);
        }
    }

    /// One command.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<CommandEntry>> {
        self.inner.lock().by_id.get(id).cloned()
    }

    /// Commands matching `filter`, newest first, without per-agent results.
    pub(crate) fn list(&self, filter: &ListFilter) -> Vec<CommandView> {
        let entries: Vec<Arc<CommandEntry>> = {
            let inner = self.inner.lock();
            inner
                .order
                .iter()
                .rev()
                .filter_map(|id| inner.by_id.get(id).cloned())
                .collect()
        };
        entries
            .into_iter()
            .filter(|f| filter.topic.as_ref().is_none_or(|t| *t == f.topic))
            .filter(|f| filter.agent.as_ref().is_none_or(|a| f.targets(a)))
            .filter(|f| match filter.status {
                None | Some(StatusFilter::Command(_)) => true,
                Some(StatusFilter::Run(status)) => f.has_run_in(status),
            })
            .map(|f| f.view(false))
            .filter(|v| match filter.status {
                Some(StatusFilter::Command(status)) => v.status == status,
                _ => true,
            })
            .take(filter.limit)
            .collect()
    }
}

#[cfg(test)]
mod status_filter_tests {
    use super::*;

    #[test]
    fn a_status_is_a_commands_first_then_a_runs_and_the_error_lists_both() {
        assert_eq!(
            StatusFilter::parse("failed"),
            Ok(StatusFilter::Command(CommandStatus::Failed))
        );
        assert_eq!(
            StatusFilter::parse("timed-out"),
            Ok(StatusFilter::Run(RunStatus::TimedOut))
        );
        let err = StatusFilter::parse("sideways").unwrap_err();
        for name in ["running", "cancelled", "crashed", "undelivered", "lost"] {
            assert!(err.contains(name), "{err}");
        }
        assert_eq!(err.matches("succeeded").count(), 1, "{err}");
    }
}
