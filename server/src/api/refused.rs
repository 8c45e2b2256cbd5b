//! Requests whose bearer token the server does not know (never issued, or revoked): each is
//! counted (`GET /v1/health` shows the count) and logged, rate-limited per source address so
//! that a flood from one address cannot flood the log nor hide another address's first try.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// How many source addresses are counted one by one; past that, a new address is logged by
/// the overall count, so that spoofed or many addresses cannot grow the map without bound.
const MAX_SOURCES: usize = 4_096;

/// Refused tokens, counted overall and per source address.
#[derive(Default)]
pub(crate) struct RefusedTokens {
    total: AtomicU64,
    by_source: Mutex<HashMap<IpAddr, u64>>,
}

impl RefusedTokens {
    /// Counts a refusal from `remote` (unknown when the request did not come through the
    /// API's listener) and logs it at its source's 1st, 2nd, 4th, 8th… refusal.
    pub(crate) fn record(&self, remote: Option<SocketAddr>, path: &str) {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(count) = self.count(remote.map(|r| r.ip()), total) {
            let remote = remote.map_or_else(|| "unknown".to_string(), |r| r.to_string());
            // The path is the caller's choice: a bounded part of it is enough to tell routes.
            let path: String = path.chars().take(100).collect();
            tracing::warn!(%remote, from_this_source = count, total, %path,
                "an operator API request with an unknown or revoked bearer token was refused");
        }
    }

    /// `remote`'s count of refusals if this one is to be logged.
    fn count(&self, remote: Option<IpAddr>, total: u64) -> Option<u64> {
        let count = match remote {
            Some(ip) => {
                let mut by_source = self.by_source.lock();
                if by_source.len() >= MAX_SOURCES && !by_source.contains_key(&ip) {
                    total
                } else {
                    let count = by_source.entry(ip).or_insert(0);
                    *count += 1;
                    *count
                }
            }
            None => total,
        };
        count.is_power_of_two().then_some(count)
    }

    /// Every refusal since the server started.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_is_logged_at_its_powers_of_two() {
        let refused = RefusedTokens::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let logged: Vec<u64> = (1..=20).filter_map(|n| refused.count(Some(a), n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
        assert_eq!(
            refused.count(Some(b), 21),
            Some(1),
            "a flood hides no other source"
        );
    }

    #[test]
    fn past_max_sources_new_addresses_go_by_the_total() {
        let refused = RefusedTokens::default();
        for i in 0..MAX_SOURCES as u32 {
            refused.count(Some(IpAddr::from(i.to_be_bytes())), 3);
        }
        let new = IpAddr::from([255, 255, 255, 255]);
        assert_eq!(refused.count(Some(new), 5_000), None);
        assert_eq!(refused.count(Some(new), 8_192), Some(8_192));
        assert_eq!(refused.by_source.lock().len(), MAX_SOURCES);
    }

    #[test]
    fn every_refusal_is_counted() {
        let refused = RefusedTokens::default();
        for _ in 0..5 {
            refused.record(None, "/v1/agents");
        }
        assert_eq!(refused.total(), 5);
    }
}
