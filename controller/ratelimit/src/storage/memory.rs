//! Counters in process memory: for one replica, tests, and running without Redis.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Storage, StorageError};
use crate::algorithm::{self, Algorithm, Counter, Decision};

#[derive(Debug, Default)]
pub struct MemoryStorage {
    /// key → (value, expires at µs). Fixed window: count; GCRA: TAT.
    counters: Mutex<HashMap<String, (u64, u64)>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.counters.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Expired entries are dropped when the map doubles past this size, so memory follows the
/// number of live counters, not the history of keys.
const SWEEP_AT: usize = 4096;

impl Storage for MemoryStorage {
    async fn check_and_update(
        &self,
        algorithm: Algorithm,
        counters: &[Counter],
        hits: u32,
        now_us: u64,
    ) -> Result<Vec<Decision>, StorageError> {
        let mut map = self
            .counters
            .lock()
            .map_err(|_| StorageError("memory storage lock poisoned".into()))?;
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, expires)| *expires > now_us);
        }
        let mut decisions = Vec::with_capacity(counters.len());
        for counter in counters {
            decisions.push(match algorithm {
                Algorithm::FixedWindow => {
                    let (key, end) = algorithm::window_key(counter, now_us);
                    let entry = map.entry(key).or_insert((0, end));
                    entry.0 += u64::from(hits);
                    algorithm::fixed_window(counter, entry.0, end, now_us)
                }
                Algorithm::Gcra => {
                    let stored = map
                        .get(&counter.key)
                        .filter(|(_, expires)| *expires > now_us)
                        .map(|(tat, _)| *tat)
                        .unwrap_or(0);
                    let (decision, new_tat) = algorithm::gcra(counter, stored, hits, now_us);
                    if let Some(tat) = new_tat {
                        map.insert(counter.key.clone(), (tat, tat));
                    }
                    decision
                }
            });
        }
        Ok(decisions)
    }

    async fn reset(&self, entries: &[(String, String)]) -> Result<u64, StorageError> {
        let mut map = self
            .counters
            .lock()
            .map_err(|_| StorageError("memory storage lock poisoned".into()))?;
        let before = map.len();
        map.retain(|key, _| !super::key_matches(key, entries));
        Ok((before - map.len()) as u64)
    }

    async fn lease(
        &self,
        counter: &Counter,
        op: super::lease::LeaseOp,
        now_us: u64,
    ) -> Result<super::lease::Grant, StorageError> {
        super::lease::memory(&self.counters, counter, op, now_us)
    }

    fn describe(&self) -> String {
        "memory (this replica only)".to_string()
    }
}
