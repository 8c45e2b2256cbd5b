//! A bounded log of events: the newest `max_droppable` log and progress events are kept, with a
//! count of those dropped; the events that say where a run or command is (accepted,
//! dispatched, finished, done) are always kept, so a watcher always sees the end. Without the
//! bound a plugin logging for as long as it runs held every line in memory for the command's
//! life (2,059 16 KB lines in 5 s: 34 MB).
//!
//! Every event has a number, its place among all the events ever added (dropped ones too), and
//! a follower asks for the events from a number on ([`EventLog::since`]): it gets those kept, the
//! number to ask from next, and how many in between were dropped, so it never misses the end
//! and never sees an event twice, however far behind it is.

use std::collections::VecDeque;

/// An event that may be dropped when the log is full (a log line, a progress report).
pub(crate) trait Droppable {
    fn droppable(&self) -> bool;
}

/// How many log and progress events one agent's run keeps.
pub(crate) const RUN_EVENTS: usize = 1_000;
/// How many log and progress events a command keeps over all its agents.
pub(crate) const COMMAND_EVENTS: usize = 1_000;

/// Events from a number on, as [`EventLog::since`] gives them.
#[derive(Debug)]
pub struct Since<E> {
    /// The kept events numbered from `from` on, in order.
    pub events: Vec<E>,
    /// The number to ask from next: one past the last event added.
    pub next: usize,
    /// How many events numbered from `from` on were dropped before they could be given.
    pub dropped: usize,
}

/// Events in order, the droppable ones bounded.
#[derive(Debug)]
pub(crate) struct EventLog<E> {
    /// Kept events that are always kept, with their numbers.
    fixed: VecDeque<(usize, E)>,
    /// Kept droppable events, oldest first, with their numbers.
    droppable: VecDeque<(usize, E)>,
    max_droppable: usize,
    /// Events ever added.
    added: usize,
    dropped: usize,
}

impl<E: Droppable + Clone> EventLog<E> {
    pub(crate) fn new(max_droppable: usize) -> EventLog<E> {
        EventLog {
            fixed: VecDeque::new(),
            droppable: VecDeque::new(),
            max_droppable,
            added: 0,
            dropped: 0,
        }
    }

    /// Adds `event`, dropping the oldest droppable one if the log is full; gives the number
    /// of events ever added.
    pub(crate) fn push(&mut self, event: E) -> usize {
        let number = self.added;
        self.added += 1;
        if event.droppable() {
            if self.droppable.len() == self.max_droppable {
                self.droppable.pop_front();
                self.dropped += 1;
            }
            if self.max_droppable > 0 {
                self.droppable.push_back((number, event));
            } else {
                self.dropped += 1;
            }
        } else {
            self.fixed.push_back((number, event));
        }
        self.added
    }

    /// The kept events numbered from `from` on, merged in order.
    pub(crate) fn since(&self, from: usize) -> Since<E> {
        let fixed = self.fixed.partition_point(|(n, _)| *n < from);
        let droppable = self.droppable.partition_point(|(n, _)| *n < from);
        let mut a = self.fixed.range(fixed..).peekable();
        let mut b = self.droppable.range(droppable..).peekable();
        let mut events = Vec::with_capacity(a.len() + b.len());
        loop {
            let take_a = match (a.peek(), b.peek()) {
                (Some((x, _)), Some((y, _))) => x < y,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (_, event) = if take_a { a.next() } else { b.next() }.expect("peeked");
            events.push(event.clone());
        }
        let next = self.added.max(from);
        let dropped = (next - from) - events.len();
        Since {
            events,
            next,
            dropped,
        }
    }

    /// Events dropped so far.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }

    /// Events ever added.
    pub(crate) fn added(&self) -> usize {
        self.added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    enum E {
        Start,
        Line(usize),
        End,
    }

    impl Droppable for E {
        fn droppable(&self) -> bool {
            matches!(self, E::Line(_))
        }
    }

    #[test]
    fn keeps_the_newest_droppable_events_and_every_other_one() {
        let mut log = EventLog::new(3);
        log.push(E::Start);
        for i in 0..10 {
            log.push(E::Line(i));
        }
        log.push(E::End);
        let all = log.since(0);
        assert_eq!(
            all.events,
            [E::Start, E::Line(7), E::Line(8), E::Line(9), E::End]
        );
        assert_eq!((all.next, all.dropped), (12, 7));
        assert_eq!(log.dropped(), 7);
    }

    #[test]
    fn a_follower_sees_each_kept_event_once_and_the_gaps() {
        let mut log = EventLog::new(2);
        log.push(E::Start);
        let first = log.since(0);
        assert_eq!((first.events.len(), first.next, first.dropped), (1, 1, 0));
        for i in 0..5 {
            log.push(E::Line(i));
        }
        let second = log.since(first.next);
        assert_eq!(second.events, [E::Line(3), E::Line(4)]);
        assert_eq!((second.next, second.dropped), (6, 3));
        log.push(E::End);
        let third = log.since(second.next);
        assert_eq!(
            (third.events, third.next, third.dropped),
            (vec![E::End], 7, 0)
        );
        let idle = log.since(third.next);
        assert!(idle.events.is_empty());
        assert_eq!((idle.next, idle.dropped), (7, 0));
        // Asking from past the end gives nothing, and no gap.
        let ahead = log.since(100);
        assert_eq!((ahead.events.len(), ahead.next, ahead.dropped), (0, 100, 0));
    }
}
