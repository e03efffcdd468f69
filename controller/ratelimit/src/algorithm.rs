//! Rate-limit algorithms as pure functions over one counter's stored value.
//!
//! Times are microseconds since the Unix epoch. Both backends apply exactly these rules: the
//! memory backend calls them under a lock, the Redis backend runs the same arithmetic in one
//! atomic round trip (see `storage::redis`).

/// How a counter admits requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Counts hits per aligned window (`now - now % window`), like envoyproxy/ratelimit: at most
    /// `limit` admitted per window, but up to `2 × limit` across a window boundary.
    FixedWindow,
    /// Generic cell rate algorithm: hits are spaced `window / limit` apart with a burst of
    /// `limit`, so no window boundary ever admits a double burst.
    Gcra,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed-window" | "fixed_window" => Ok(Self::FixedWindow),
            "gcra" => Ok(Self::Gcra),
            other => Err(format!("unknown algorithm {other:?} (fixed-window, gcra)")),
        }
    }
}

/// One limit to check: a storage key (already unique per domain and descriptor values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub key: String,
    pub limit: u32,
    pub window_us: u64,
}

/// The outcome for one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u32,
    /// Allowed: until the counter is fully reset. Denied: until a hit would be admitted again.
    pub reset_us: u64,
}

/// The key a fixed-window counter is stored under for the window containing `now`.
pub fn window_key(counter: &Counter, now_us: u64) -> (String, u64) {
    let window = counter.window_us.max(1);
    let start = now_us - now_us % window;
    (format!("{}:{start}", counter.key), start + window)
}

/// Fixed window, given the count after adding this request's hits.
pub fn fixed_window(
    counter: &Counter,
    count_after: u64,
    window_end_us: u64,
    now_us: u64,
) -> Decision {
    let limit = u64::from(counter.limit);
    Decision {
        allowed: count_after <= limit,
        remaining: u32::try_from(limit.saturating_sub(count_after)).unwrap_or(0),
        reset_us: window_end_us.saturating_sub(now_us),
    }
}

/// The GCRA emission interval: how far apart admitted hits are spaced.
pub fn gcra_interval(counter: &Counter) -> u64 {
    (counter.window_us / u64::from(counter.limit.max(1))).max(1)
}

/// GCRA step: from the stored theoretical arrival time (0 when absent) to the decision and the
/// new TAT to store (`None`: leave the stored value as it is).
pub fn gcra(
    counter: &Counter,
    stored_tat_us: u64,
    hits: u32,
    now_us: u64,
) -> (Decision, Option<u64>) {
    let interval = gcra_interval(counter);
    let tat = stored_tat_us.max(now_us);
    let new_tat = tat + interval * u64::from(hits);
    let ahead = new_tat - now_us;
    if counter.limit == 0 || ahead > counter.window_us {
        let retry = (new_tat.saturating_sub(counter.window_us)).saturating_sub(now_us);
        return (
            Decision {
                allowed: false,
                remaining: 0,
                reset_us: retry.max(1),
            },
            None,
        );
    }
    let remaining = (counter.window_us - ahead) / interval;
    (
        Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_us: ahead,
        },
        Some(new_tat),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn counter(limit: u32, window_us: u64) -> Counter {
        Counter {
            key: "k".into(),
            limit,
            window_us,
        }
    }

    #[test]
    fn fixed_window_keys_align_to_window_starts() {
        let c = counter(5, 60 * SEC);
        assert_eq!(
            window_key(&c, 61 * SEC),
            ("k:60000000".to_string(), 120 * SEC)
        );
        assert_eq!(window_key(&c, 119 * SEC).0, "k:60000000");
        assert_eq!(window_key(&c, 120 * SEC).0, "k:120000000");
    }

    #[test]
    fn gcra_admits_a_burst_of_limit_then_one_per_interval() {
        let c = counter(10, 10 * SEC); // one per second, burst 10
        let mut tat = 0;
        let now = 1_000 * SEC;
        for i in 0..10 {
            let (d, new) = gcra(&c, tat, 1, now);
            assert!(d.allowed, "hit {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = new.unwrap();
        }
        let (d, new) = gcra(&c, tat, 1, now);
        assert!(!d.allowed && new.is_none());
        assert_eq!(d.reset_us, SEC, "next hit is admitted one interval later");
        // Smooth: after exactly one interval, exactly one more hit.
        let (d, new) = gcra(&c, tat, 1, now + SEC);
        assert!(d.allowed);
        let (d2, _) = gcra(&c, new.unwrap(), 1, now + SEC);
        assert!(!d2.allowed);
    }
}
