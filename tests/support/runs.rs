//! How many times agents in this process ran each command, read from the agents' own tracing:
//! the executor logs `command ended` once per run of a plugin, inside the span of the command
//! with its id. A test that must show a command ran once (not twice after a reconnection or a
//! restart) counts those events.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

fn counts() -> &'static Mutex<HashMap<String, usize>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// How many runs of command `id` ended on agents of this process (0 before the layer is
/// installed by [`crate::init_tracing`]).
pub fn runs_of(id: &str) -> usize {
    counts().lock().unwrap().get(id).copied().unwrap_or(0)
}

/// The tracing layer that counts.
pub(crate) struct RunCounter;

struct CommandId(String);

#[derive(Default)]
struct Fields {
    id: Option<String>,
    message: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "id" => self.id = Some(value.to_string()),
            "message" => self.message = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "id" => self.id = Some(format!("{value:?}")),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S> Layer<S> for RunCounter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "command" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(command), Some(span)) = (fields.id, ctx.span(id)) {
            span.extensions_mut().insert(CommandId(command));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message.as_deref() != Some("command ended") {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(CommandId(id)) = span.extensions().get::<CommandId>() {
                *counts().lock().unwrap().entry(id.clone()).or_default() += 1;
                return;
            }
        }
    }
}
