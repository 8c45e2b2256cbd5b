//! Following a command while it runs: one progress bar per agent when there are few, one
//! summary bar when there are many; plain lines on stderr when it is not a terminal; nothing
//! for `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use crate::output::terminal_safe;
use ferry_api::{CommandEvent, Status};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Up to this many agents get a bar each.
pub const BARS_UP_TO: usize = 8;

/// What a finished agent counts as in the summary.
pub fn category(status: Status) -> &'static str {
    match status {
        Status::Succeeded => "succeeded",
        Status::TimedOut => "timed out",
        Status::Undelivered => "undelivered",
        Status::Cancelled => "cancelled",
        Status::Pending | Status::Running => "running",
        Status::InvalidInput
        | Status::Denied
        | Status::Failed
        | Status::Crashed
        | Status::UnknownTopic
        | Status::Rejected
        | Status::Lost => "failed",
    }
}

/// The display of one command's progress.
pub struct Follow {
    /// Text for people at all (`--json` turns it off).
    human: bool,
    /// Bars drawn (a terminal); otherwise plain lines.
    bars_visible: bool,
    single: bool,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    summary: Option<ProgressBar>,
    counts: Vec<(&'static str, u32)>,
}

impl Follow {
    /// A display for a command to `agents` (in sending order).
    pub fn new(human: bool, agents: &[String]) -> Follow {
        let bars_visible = human && std::io::stderr().is_terminal();
        let target = if bars_visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let mut bars = HashMap::new();
        let mut summary = None;
        if agents.len() <= BARS_UP_TO {
            let width = agents.iter().map(|a| a.chars().count()).max().unwrap_or(5);
            let style = ProgressStyle::with_template(&format!(
                "{{spinner}} {{prefix:<{width}}} [{{bar:30}}] {{pos:>3}}% {{msg}}"
            ))
            .expect("a valid template")
            .progress_chars("=> ");
            for agent in agents {
                let bar = multi.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(agent.clone());
                bar.set_message("waiting");
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(agent.clone(), bar);
            }
        } else {
            let bar = multi.add(ProgressBar::new(agents.len() as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:40}] {pos}/{len} agents done ({elapsed}) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            summary = Some(bar);
        }
        Follow {
            human,
            bars_visible,
            single: agents.len() == 1,
            multi,
            bars,
            summary,
            counts: Vec::new(),
        }
    }

    fn line(&self, text: String) {
        if !self.human {
            return;
        }
        if self.bars_visible {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// One event of the command.
    pub fn event(&mut self, event: &CommandEvent) {
        let agent = event.agent().unwrap_or("?");
        let bar = self.bars.get(agent).cloned();
        // Lines for one agent read as they did before fleets; with several, they name the agent.
        let prefix = if self.single {
            String::new()
        } else {
            format!("{agent}: ")
        };
        let plain = !self.bars_visible && self.summary.is_none();
        match event {
            CommandEvent::Dispatched { .. } => {
                if let Some(bar) = bar {
                    bar.set_message("sent");
                }
            }
            CommandEvent::Accepted { .. } => {
                if let Some(bar) = bar {
                    bar.set_message("running");
                }
                if plain {
                    self.line(format!("  {prefix}accepted"));
                }
            }
            CommandEvent::Progress {
                percent, message, ..
            } => {
                if let Some(bar) = bar {
                    bar.set_position(u64::from(*percent));
                    bar.set_message(terminal_safe(message, false).into_owned());
                }
                if plain {
                    let message = terminal_safe(message, false);
                    self.line(format!("  {prefix}[{percent:>3}%] {message}"));
                }
            }
            CommandEvent::Log { level, message, .. } if self.summary.is_none() => {
                let level = level.to_string();
                let message = terminal_safe(message, false);
                self.line(format!("  {prefix}{level:<5} {message}"));
            }
            CommandEvent::Log { .. } => {}
            CommandEvent::Finished { status, .. } => {
                let status = *status;
                let category = category(status);
                match self.counts.iter_mut().find(|(c, _)| *c == category) {
                    Some((_, n)) => *n += 1,
                    None => self.counts.push((category, 1)),
                }
                if let Some(bar) = bar {
                    if status == Status::Succeeded {
                        bar.set_position(100);
                    }
                    bar.finish_with_message(status.name());
                }
                if let Some(summary) = &self.summary {
                    summary.inc(1);
                    summary.set_message(self.counts_text());
                    if !self.bars_visible {
                        self.line(format!("  {agent}: {}", status.name()));
                    }
                } else if !self.single && !self.bars_visible {
                    self.line(format!("  {agent}: {}", status.name()));
                }
            }
            CommandEvent::Dropped { count } if self.summary.is_none() => {
                self.line(format!(
                    "  … {count} log and progress events dropped here (the server keeps the newest 1,000 of a command)"
                ));
            }
            CommandEvent::Dropped { .. } => {}
            CommandEvent::Done { .. } => self.finish(),
        }
    }

    fn counts_text(&self) -> String {
        self.counts
            .iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Ends the bars (the stream ended).
    pub fn finish(&mut self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        if let Some(bar) = &self.summary {
            bar.finish_with_message(self.counts_text());
        }
    }
}
