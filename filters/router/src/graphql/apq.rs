//! Automatic persisted queries (Apollo APQ): queries remembered by their SHA-256, per worker,
//! least recently used out.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

#[derive(Debug)]
pub struct PersistedQueries {
    capacity: usize,
    /// Hash → (query, last use).
    entries: HashMap<String, (String, u64)>,
    clock: u64,
}

impl PersistedQueries {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            clock: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn get(&mut self, hash: &str) -> Option<String> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(hash).map(|(query, used)| {
            *used = clock;
            query.clone()
        })
    }

    /// Remembers `query` under `hash`, evicting the least recently used entry when full
    /// (a linear scan: capacities are small and inserts rare next to lookups).
    pub fn put(&mut self, hash: &str, query: &str) {
        if !self.enabled() {
            return;
        }
        self.clock += 1;
        if !self.entries.contains_key(hash) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries
            .insert(hash.to_string(), (query.to_string(), self.clock));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

pub fn sha256_hex(query: &str) -> String {
    Sha256::digest(query.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
