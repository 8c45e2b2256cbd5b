//! Commands as operators send them: one topic and payload for one agent, a list, the agents a
//! label selector matches, or all of them. Each command fans out into one child
//! [`CommandEntry`] per agent (each over its own stream, as `dispatch.rs` runs it).
//!
//! The server does the fan-out, honouring two limits, as fleet operators know them from SSM:
//! - `max_concurrency`: at most this many agents run the command at once; the next agent is sent
//!   it only when one has finished;
//! - `max_errors`: once this many agents have failed (failed, crashed, timed out, lost…), no
//!   more are sent it; the agents left are `undelivered`, with the reason.
//!
//! Agents that are offline when their turn comes are `undelivered` too, and do not count as
//! errors: they never ran it. Cancelling a command stops the sending (the agents left are
//! `cancelled`) and cancels every child still running.
//!
//! Like child commands, a command keeps all its events in order — the children's, tagged with
//! the agent, plus `dispatched` and a final `done` — so a watcher that joins late misses nothing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::AgentId;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::commands::{CommandEntry, CommandEvent, CommandStatus, RenderedPayload};
use crate::plugins::Selector;
use crate::server::{ServerState, SubmitError};
use ferry_protocol::ResultStats;

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
pub struct FleetRequest {
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
    /// Who asked (a token's name), for the record.
    pub created_by: String,
}

/// Where a command is, or how it ended as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetStatus {
    /// Agents are still being sent it or running it.
    Running,
    /// Every agent succeeded.
    Succeeded,
    /// At least one agent did not succeed (see the summary), and nobody cancelled it.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl FleetStatus {
    /// Parses the name the API uses.
    pub fn parse(s: &str) -> Option<FleetStatus> {
        match s {
            "running" => Some(FleetStatus::Running),
            "succeeded" => Some(FleetStatus::Succeeded),
            "failed" => Some(FleetStatus::Failed),
            "cancelled" => Some(FleetStatus::Cancelled),
            _ => None,
        }
    }
}

/// How many agents are where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Agents targeted.
    pub total: u32,
    /// Not sent yet, or sent and not accepted yet.
    pub pending: u32,
    /// Running.
    pub running: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Ended in any failure but a timeout: failed, invalid input, denied, crashed, unknown
    /// topic, rejected, lost.
    pub failed: u32,
    /// Ran past the timeout.
    pub timed_out: u32,
    /// Never ran: offline, not connected, or not sent because of `max_errors`.
    pub undelivered: u32,
    /// Cancelled, or not sent because the command was cancelled.
    pub cancelled: u32,
}

impl Summary {
    fn add(&mut self, status: CommandStatus) {
        self.total += 1;
        match status {
            CommandStatus::Pending => self.pending += 1,
            CommandStatus::Running => self.running += 1,
            CommandStatus::Succeeded => self.succeeded += 1,
            CommandStatus::TimedOut => self.timed_out += 1,
            CommandStatus::Undelivered => self.undelivered += 1,
            CommandStatus::Cancelled => self.cancelled += 1,
            _ => self.failed += 1,
        }
    }
}

/// Does an agent that ended so count against `max_errors`? Only agents that ran it and did not
/// succeed: undelivered ones never ran it, and cancelled ones were stopped on purpose.
fn is_error(status: CommandStatus) -> bool {
    status.is_final()
        && !matches!(
            status,
            CommandStatus::Succeeded | CommandStatus::Undelivered | CommandStatus::Cancelled
        )
}

/// One agent's part of a command.
#[derive(Debug, Clone, Serialize)]
pub struct AgentResult {
    /// The agent.
    pub agent: String,
    /// The id the agent knows its run by (in its logs and journal); none until it is sent.
    pub agent_command_id: Option<String>,
    /// Where it is, or how it ended.
    pub status: CommandStatus,
    /// The last progress the plugin reported.
    pub progress: Option<u8>,
    /// Why it did not succeed, or why it was not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The plugin's output.
    #[serde(flatten)]
    pub output: RenderedPayload,
    /// What it cost on the agent.
    pub stats: Option<ResultStats>,
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// A command as the operator API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// The target as given: agent ids, a selector, or `all`.
    pub target: String,
    /// Where it is, or how it ended.
    pub status: FleetStatus,
    /// Who sent it (a token's name).
    pub created_by: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the last agent ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The concurrency limit, if any.
    pub max_concurrency: Option<u32>,
    /// The error limit, if any.
    pub max_errors: Option<u32>,
    /// The most agents that ran it at once, by the server's own count.
    pub peak_concurrency: u32,
    /// How many agents are where.
    pub summary: Summary,
    /// Each agent's part, in the order they are sent it; left out of listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<AgentResult>>,
}

/// An agent's place in a command.
struct Slot {
    agent: String,
    entry: Option<Arc<CommandEntry>>,
    /// Why it was never sent, and when that was decided.
    not_sent: Option<(CommandStatus, String, OffsetDateTime)>,
}

impl Slot {
    fn status(&self) -> CommandStatus {
        match (&self.entry, &self.not_sent) {
            (Some(entry), _) => entry.view().status,
            (None, Some((status, _, _))) => *status,
            (None, None) => CommandStatus::Pending,
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
                }
            }
            (None, not_sent) => AgentResult {
                agent: self.agent.clone(),
                agent_command_id: None,
                status: not_sent
                    .as_ref()
                    .map_or(CommandStatus::Pending, |(s, _, _)| *s),
                progress: None,
                detail: not_sent.as_ref().map(|(_, why, _)| why.clone()),
                output: RenderedPayload::default(),
                stats: None,
                sent_at: None,
                finished_at: not_sent.as_ref().map(|(_, _, at)| *at),
            },
        }
    }
}

struct Inner {
    slots: Vec<Slot>,
    /// Every event, in order: (SSE event name, JSON data).
    events: Vec<(&'static str, Value)>,
    finished_at: Option<OffsetDateTime>,
    in_flight: u32,
    peak: u32,
    errors: u32,
}

/// A command for one or many agents.
pub struct FleetEntry {
    id: String,
    topic: String,
    target: String,
    created_by: String,
    created_at: OffsetDateTime,
    max_concurrency: Option<u32>,
    max_errors: Option<u32>,
    inner: Mutex<Inner>,
    changed: watch::Sender<usize>,
    cancel: CancellationToken,
}

impl FleetEntry {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The child command sent to the agent at `index` (in sending order), once sent.
    pub fn child(&self, index: usize) -> Option<Arc<CommandEntry>> {
        self.inner.lock().slots.get(index)?.entry.clone()
    }

    /// Has it ended, every agent done?
    pub fn is_finished(&self) -> bool {
        self.inner.lock().finished_at.is_some()
    }

    fn status(&self, inner: &Inner, summary: &Summary) -> FleetStatus {
        if inner.finished_at.is_none() {
            FleetStatus::Running
        } else if self.cancel.is_cancelled() {
            FleetStatus::Cancelled
        } else if summary.succeeded == summary.total {
            FleetStatus::Succeeded
        } else {
            FleetStatus::Failed
        }
    }

    /// Its current view, with each agent's result when `results`.
    pub fn view(&self, results: bool) -> FleetView {
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
        FleetView {
            id: self.id.clone(),
            topic: self.topic.clone(),
            target: self.target.clone(),
            status: self.status(&inner, &summary),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            finished_at: inner.finished_at,
            max_concurrency: self.max_concurrency,
            max_errors: self.max_errors,
            peak_concurrency: inner.peak,
            summary,
            results: results.then_some(list),
        }
    }

    /// Did it target `agent`?
    pub fn targets(&self, agent: &str) -> bool {
        self.inner.lock().slots.iter().any(|s| s.agent == agent)
    }

    /// Events from number `from` on: (SSE event name, JSON data).
    pub fn events_since(&self, from: usize) -> Vec<(&'static str, Value)> {
        self.inner
            .lock()
            .events
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
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
    pub async fn wait(&self) -> FleetView {
        let mut rx = self.subscribe();
        while !self.is_finished() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.view(true)
    }

    fn push_locked(&self, inner: &mut Inner, kind: &'static str, data: Value) {
        inner.events.push((kind, data));
        self.changed.send_replace(inner.events.len());
    }

    fn dispatched(&self, index: usize, entry: Arc<CommandEntry>) {
        let mut inner = self.inner.lock();
        let agent = inner.slots[index].agent.clone();
        let id = entry.view().id;
        inner.slots[index].entry = Some(entry);
        inner.in_flight += 1;
        inner.peak = inner.peak.max(inner.in_flight);
        let at = rfc3339(OffsetDateTime::now_utc());
        self.push_locked(
            &mut inner,
            "dispatched",
            json!({"type": "dispatched", "agent": agent, "agent_command_id": id, "at": at}),
        );
    }

    fn not_sent(&self, index: usize, status: CommandStatus, why: String) {
        let mut inner = self.inner.lock();
        let at = OffsetDateTime::now_utc();
        let agent = inner.slots[index].agent.clone();
        inner.slots[index].not_sent = Some((status, why.clone(), at));
        self.push_locked(
            &mut inner,
            "finished",
            json!({"type": "finished", "agent": agent, "status": status, "detail": why, "at": rfc3339(at)}),
        );
    }

    fn agent_event(&self, index: usize, event: &CommandEvent) {
        let kind = match event {
            CommandEvent::Accepted { .. } => "accepted",
            CommandEvent::Progress { .. } => "progress",
            CommandEvent::Log { .. } => "log",
            CommandEvent::Finished { .. } => "finished",
        };
        let mut data = serde_json::to_value(event).expect("an event serializes");
        let mut inner = self.inner.lock();
        data["agent"] = Value::String(inner.slots[index].agent.clone());
        if let CommandEvent::Finished { status, .. } = event {
            inner.in_flight -= 1;
            inner.errors += u32::from(is_error(*status));
        }
        self.push_locked(&mut inner, kind, data);
    }

    fn errors(&self) -> u32 {
        self.inner.lock().errors
    }

    fn finish(&self) {
        let view = self.view(false);
        let mut inner = self.inner.lock();
        let now = OffsetDateTime::now_utc();
        inner.finished_at = Some(now);
        let mut summary = Summary::default();
        for slot in &inner.slots {
            summary.add(slot.status());
        }
        let status = self.status(&inner, &summary);
        self.push_locked(
            &mut inner,
            "done",
            json!({"type": "done", "status": status, "summary": summary, "peak_concurrency": view.peak_concurrency, "at": rfc3339(now)}),
        );
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC time formats")
}

/// Which agents `target` means now, in sending order, with the single agent's connection
/// checked when it names one agent.
fn resolve(state: &ServerState, target: &Target) -> Result<Vec<String>, SubmitError> {
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
            let ids: Vec<String> = state
                .registry
                .list()
                .into_iter()
                .filter(|a| state.overrides.revoked(&a.id).is_none())
                .filter(|a| selector.matches(&state.overrides.effective_labels(&a.id, &a.labels)))
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
/// is not connected (nothing would run); for several, such agents are `undelivered`.
pub(crate) fn start(
    state: &Arc<ServerState>,
    request: FleetRequest,
) -> Result<Arc<FleetEntry>, SubmitError> {
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
    crate::server::check_request(state, &request.topic, request.payload.len())?;
    let agents = resolve(state, &request.target)?;
    let first = match (&request.target, agents.as_slice()) {
        (Target::Agents(_), [one]) => {
            let id = AgentId::new(one.clone()).map_err(|e| SubmitError::Invalid(e.to_string()))?;
            Some(crate::server::send_to(state, &id, &request)?)
        }
        _ => None,
    };
    let fleet = Arc::new(FleetEntry {
        id: uuid::Uuid::new_v4().to_string(),
        topic: request.topic.clone(),
        target: request.target.to_string(),
        created_by: request.created_by.clone(),
        created_at: OffsetDateTime::now_utc(),
        max_concurrency: request.max_concurrency,
        max_errors: request.max_errors,
        inner: Mutex::new(Inner {
            slots: agents
                .into_iter()
                .map(|agent| Slot {
                    agent,
                    entry: None,
                    not_sent: None,
                })
                .collect(),
            events: Vec::new(),
            finished_at: None,
            in_flight: 0,
            peak: 0,
            errors: 0,
        }),
        changed: watch::Sender::new(0),
        cancel: CancellationToken::new(),
    });
    if let Some(entry) = &first {
        fleet.dispatched(0, entry.clone());
    }
    state.fleets.insert(fleet.clone());
    tokio::spawn(drive(state.clone(), fleet.clone(), request, first));
    Ok(fleet)
}

/// Sends the command to each agent in turn, within the limits, and waits for all of them.
async fn drive(
    state: Arc<ServerState>,
    fleet: Arc<FleetEntry>,
    request: FleetRequest,
    mut first: Option<Arc<CommandEntry>>,
) {
    let limit = fleet
        .max_concurrency
        .map_or(Semaphore::MAX_PERMITS, |n| n as usize);
    let semaphore = Arc::new(Semaphore::new(limit));
    let agents: Vec<String> = fleet
        .inner
        .lock()
        .slots
        .iter()
        .map(|s| s.agent.clone())
        .collect();
    let mut followers = JoinSet::new();
    for (index, agent) in agents.iter().enumerate() {
        let permit = tokio::select! {
            biased;
            _ = fleet.cancel.cancelled() => None,
            permit = semaphore.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit.filter(|_| !fleet.cancel.is_cancelled()) else {
            for rest in index..agents.len() {
                fleet.not_sent(
                    rest,
                    CommandStatus::Cancelled,
                    "not sent: the command was cancelled first".into(),
                );
            }
            break;
        };
        if let Some(max) = fleet.max_errors {
            let errors = fleet.errors();
            if errors >= max {
                for rest in index..agents.len() {
                    fleet.not_sent(
                        rest,
                        CommandStatus::Undelivered,
                        format!("not sent: {errors} agents had failed, the most max_errors ({max}) allows"),
                    );
                }
                break;
            }
        }
        let sent = match first.take() {
            // Already sent by `start`, and recorded.
            Some(entry) => Ok((entry, false)),
            None => match AgentId::new(agent.clone()) {
                Ok(id) if state.overrides.revoked(agent).is_some() => {
                    Err(format!("not sent: agent '{id}' is revoked"))
                }
                Ok(id) => crate::server::send_to(&state, &id, &request)
                    .map(|entry| (entry, true))
                    .map_err(|e| format!("not sent: {e}")),
                Err(e) => Err(e.to_string()),
            },
        };
        match sent {
            Ok((entry, record)) => {
                if record {
                    fleet.dispatched(index, entry.clone());
                }
                followers.spawn(follow(fleet.clone(), index, entry, permit));
            }
            Err(why) => fleet.not_sent(index, CommandStatus::Undelivered, why),
        }
    }
    while followers.join_next().await.is_some() {}
    fleet.finish();
    tracing::info!(command = %fleet.id, view = ?fleet.view(false).summary, "command ended");
}

/// Copies one agent's events into the command's and releases its concurrency permit when the
/// agent's run ends (after the count is updated, so the next agent is sent it only then).
async fn follow(
    fleet: Arc<FleetEntry>,
    index: usize,
    entry: Arc<CommandEntry>,
    permit: OwnedSemaphorePermit,
) {
    let mut rx = entry.subscribe();
    let mut next = 0;
    let mut cancel_sent = false;
    'follow: loop {
        let fresh = entry.events_since(next);
        next += fresh.len();
        for event in &fresh {
            fleet.agent_event(index, event);
            if matches!(event, CommandEvent::Finished { .. }) {
                break 'follow;
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() {
                break;
            },
            _ = fleet.cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                entry.request_cancel();
            }
        }
    }
    drop(permit);
}

/// How many ended commands the store keeps; each holds its agents' results.
pub const RETAINED_FLEETS: usize = 2_000;

/// What `GET /v1/commands` filters by.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only commands in this state.
    pub status: Option<FleetStatus>,
    /// Only commands on this topic.
    pub topic: Option<String>,
    /// Only commands that targeted this agent.
    pub agent: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// Every command the server knows, newest last.
#[derive(Default)]
pub(crate) struct FleetStore {
    inner: Mutex<StoreInner>,
}

#[derive(Default)]
struct StoreInner {
    by_id: HashMap<String, Arc<FleetEntry>>,
    order: VecDeque<String>,
}

impl FleetStore {
    fn insert(&self, fleet: Arc<FleetEntry>) {
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
    pub(crate) fn get(&self, id: &str) -> Option<Arc<FleetEntry>> {
        self.inner.lock().by_id.get(id).cloned()
    }

    /// Commands matching `filter`, newest first, without per-agent results.
    pub(crate) fn list(&self, filter: &ListFilter) -> Vec<FleetView> {
        let entries: Vec<Arc<FleetEntry>> = {
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
            .map(|f| f.view(false))
            .filter(|v| filter.status.is_none_or(|s| s == v.status))
            .take(filter.limit)
            .collect()
    }
}
