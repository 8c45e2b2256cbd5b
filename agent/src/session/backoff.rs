//! Reconnect delays: exponential backoff with full jitter, so a fleet that lost its server does
//! not come back in one synchronized wave.
//!
//! A delay is uniform between half the minimum and a cap that doubles with each attempt up to the
//! maximum; the floor keeps a broken server from being hammered. An established session resets it.

use std::time::Duration;

use rand::Rng;

/// Successive reconnect delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min: min.max(Duration::from_millis(1)),
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay: uniform in `[min/2, cap]`, where the cap doubles with each attempt up to
    /// `max`. Half of `min` is kept as a floor so a broken server is never hammered.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let floor = self.min / 2;
        let span = cap.saturating_sub(floor);
        floor + span.mul_f64(rand::rng().random::<f64>())
    }

    /// After a successful session: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        for attempt in 0..30u32 {
            let d = b.next_delay();
            let cap = min.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(d >= min / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
