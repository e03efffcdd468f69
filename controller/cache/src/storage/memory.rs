//! Entries in process memory: for one replica, tests, and running without Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use nexus_proto::cache::{Entry, Invalidation, PutRequest, PutResponse};

use super::{newer, system_clock, Clock, Storage, StorageError, Watermark};

struct Stored {
    value: Vec<u8>,
    tags: Vec<String>,
    timestamp_ms: u64,
    writer: String,
    expires_at_ms: u64,
}

#[derive(Default)]
struct Entries {
    /// Ordered, so a prefix is a range scan.
    by_key: BTreeMap<String, Stored>,
    /// tag → keys carrying it; kept exact (entries leave it when removed, re-tagged or swept).
    by_tag: HashMap<String, BTreeSet<String>>,
    /// Expired entries are swept when the map doubles past this, so memory follows live entries.
    sweep_at: usize,
    marks: Marks,
}

/// Invalidation watermarks (see [`Watermark`]), under the same lock as the entries so a put's
/// check and write are one step.
#[derive(Default)]
struct Marks {
    keys: HashMap<String, Mark>,
    /// Looked up by the key's own prefixes, only at the lengths in `prefix_lens` (as on Redis):
    /// as many lookups as distinct prefix lengths were invalidated, not one per byte of the key.
    prefixes: HashMap<String, Mark>,
    /// The byte lengths of the keys of `prefixes` (rebuilt when they are swept).
    prefix_lens: BTreeSet<usize>,
    tags: HashMap<String, Mark>,
    /// Expired marks are swept when there are this many, like entries.
    sweep_at: usize,
}

#[derive(Clone, Copy)]
struct Mark {
    at_ms: u64,
    expires_at_ms: u64,
}

impl Marks {
    fn len(&self) -> usize {
        self.keys.len() + self.prefixes.len() + self.tags.len()
    }

    fn record(&mut self, selection: &Invalidation, watermark: Watermark, now_ms: u64) {
        let mark = Mark {
            at_ms: watermark.at_ms,
            expires_at_ms: now_ms.saturating_add(watermark.ttl_ms),
        };
        for (map, names) in [
            (&mut self.keys, &selection.keys),
            (&mut self.prefixes, &selection.prefixes),
            (&mut self.tags, &selection.tags),
        ] {
            for name in names {
                let m = map.entry(name.clone()).or_insert(mark);
                if m.expires_at_ms <= now_ms {
                    *m = mark;
                }
                m.at_ms = m.at_ms.max(mark.at_ms);
                m.expires_at_ms = m.expires_at_ms.max(mark.expires_at_ms);
            }
        }
        self.prefix_lens
            .extend(selection.prefixes.iter().map(String::len));
        if self.len() >= self.sweep_at {
            for map in [&mut self.keys, &mut self.prefixes, &mut self.tags] {
                map.retain(|_, m| m.expires_at_ms > now_ms);
            }
            self.prefix_lens = self.prefixes.keys().map(String::len).collect();
            self.sweep_at = (self.len() * 2).max(MIN_SWEEP_AT);
        }
    }

    /// The newest live watermark matching `key` (exactly, by a prefix, or by one of `tags`).
    fn newest(&self, key: &str, tags: &[String], now_ms: u64) -> Option<u64> {
        let live = |m: Option<&Mark>| m.filter(|m| m.expires_at_ms > now_ms).map(|m| m.at_ms);
        let prefixes = self
            .prefix_lens
            .range(..=key.len())
            .filter_map(|&len| key.get(..len));
        std::iter::once(live(self.keys.get(key)))
            .chain(prefixes.map(|p| live(self.prefixes.get(p))))
            .chain(tags.iter().map(|t| live(self.tags.get(t))))
            .flatten()
            .max()
    }
}

impl Entries {
    fn remove(&mut self, key: &str) -> bool {
        let Some(old) = self.by_key.remove(key) else {
            return false;
        };
        self.untag(key, &old.tags);
        true
    }

    fn untag(&mut self, key: &str, tags: &[String]) {
        for tag in tags {
            if let Some(keys) = self.by_tag.get_mut(tag) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
    }

    fn sweep(&mut self, now_ms: u64) {
        if self.by_key.len() < self.sweep_at {
            return;
        }
        let expired: Vec<String> = self
            .by_key
            .iter()
            .filter(|(_, e)| e.expires_at_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        self.sweep_at = (self.by_key.len() * 2).max(MIN_SWEEP_AT);
    }
}

const MIN_SWEEP_AT: usize = 4096;

pub struct MemoryStorage {
    entries: Mutex<Entries>,
    clock: Clock,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// On the real clock.
    pub fn new() -> Self {
        Self::with_clock(system_clock())
    }

    pub fn with_clock(clock: Clock) -> Self {
        Self {
            entries: Mutex::new(Entries {
                sweep_at: MIN_SWEEP_AT,
                marks: Marks {
                    sweep_at: MIN_SWEEP_AT,
                    ..Marks::default()
                },
                ..Entries::default()
            }),
            clock,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Entries>, StorageError> {
        self.entries
            .lock()
            .map_err(|_| StorageError("memory storage lock poisoned".into()))
    }
}

#[tonic::async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        let now = (self.clock)();
        let entries = self.lock()?;
        Ok(entries
            .by_key
            .get(key)
            .filter(|e| e.expires_at_ms > now)
            .map(|e| Entry {
                value: e.value.clone(),
                tags: e.tags.clone(),
                timestamp_ms: e.timestamp_ms,
                writer: e.writer.clone(),
                ttl_remaining_ms: e.expires_at_ms - now,
            }))
    }

    async fn put(&self, put: &PutRequest) -> Result<PutResponse, StorageError> {
        let now = (self.clock)();
        let mut entries = self.lock()?;
        entries.sweep(now);
        let cur = entries
            .by_key
            .get(&put.key)
            .filter(|e| e.expires_at_ms > now);
        let refused = |cur: Option<&Stored>| PutResponse {
            stored: false,
            timestamp_ms: cur.map_or(0, |c| c.timestamp_ms),
            writer: cur.map(|c| c.writer.clone()).unwrap_or_default(),
        };
        if let Some(c) = cur {
            if !newer(put.timestamp_ms, &put.writer, c.timestamp_ms, &c.writer) {
                return Ok(refused(cur));
            }
        }
        // Fetched at or before an invalidation of this key: possibly stale.
        if entries
            .marks
            .newest(&put.key, &put.tags, now)
            .is_some_and(|at_ms| put.timestamp_ms <= at_ms)
        {
            return Ok(refused(cur));
        }
        entries.remove(&put.key);
        for tag in &put.tags {
            entries
                .by_tag
                .entry(tag.clone())
                .or_default()
                .insert(put.key.clone());
        }
        entries.by_key.insert(
            put.key.clone(),
            Stored {
                value: put.value.clone(),
                tags: put.tags.clone(),
                timestamp_ms: put.timestamp_ms,
                writer: put.writer.clone(),
                expires_at_ms: now.saturating_add(put.ttl_ms),
            },
        );
        Ok(PutResponse {
            stored: true,
            timestamp_ms: put.timestamp_ms,
            writer: put.writer.clone(),
        })
    }

    async fn invalidate(
        &self,
        selection: &Invalidation,
        watermark: Watermark,
    ) -> Result<u64, StorageError> {
        let now = (self.clock)();
        let mut entries = self.lock()?;
        // One lock for both: no put can land between the watermark and the removal anyway.
        entries.marks.record(selection, watermark, now);
        let mut doomed: BTreeSet<String> = selection.keys.iter().cloned().collect();
        for prefix in &selection.prefixes {
            doomed.extend(
                entries
                    .by_key
                    .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .map(|(k, _)| k.clone()),
            );
        }
        for tag in &selection.tags {
            if let Some(keys) = entries.by_tag.get(tag) {
                doomed.extend(keys.iter().cloned());
            }
        }
        let mut removed = 0;
        for key in doomed {
            // An expired entry is already gone as far as anyone can tell: not counted.
            let live = entries
                .by_key
                .get(&key)
                .is_some_and(|e| e.expires_at_ms > now);
            if entries.remove(&key) && live {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn tag_index(&self, tag: &str) -> Result<Vec<String>, StorageError> {
        let entries = self.lock()?;
        Ok(entries
            .by_tag
            .get(tag)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn describe(&self) -> String {
        "memory (this replica only)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    fn put(key: &str, tags: &[&str], ttl_ms: u64) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            tags: tags.iter().map(|t| (*t).to_string()).collect(),
            ttl_ms,
            timestamp_ms: 1,
            writer: "w".into(),
        }
    }

    #[tokio::test]
    async fn expiry_follows_the_injected_clock_and_sweeps_clean_the_tag_index() {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = now.clone();
        let s = MemoryStorage::with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        s.put(&put("short", &["t"], 100)).await.unwrap();
        now.store(1_099, Ordering::SeqCst);
        assert_eq!(s.get("short").await.unwrap().unwrap().ttl_remaining_ms, 1);
        now.store(1_100, Ordering::SeqCst);
        assert_eq!(s.get("short").await.unwrap(), None);
        // Expired entries stay until the map is large enough to sweep; then they and their
        // tag index entries go.
        for i in 1..MIN_SWEEP_AT {
            s.put(&put(&format!("k{i}"), &["bulk"], 1_000_000))
                .await
                .unwrap();
        }
        assert_eq!(s.tag_index("t").await.unwrap(), ["short"]);
        s.put(&put("trigger", &[], 1_000_000)).await.unwrap();
        assert!(s.tag_index("t").await.unwrap().is_empty());
        assert_eq!(s.lock().unwrap().by_key.len(), MIN_SWEEP_AT);
    }

    #[tokio::test]
    async fn watermarks_follow_the_injected_clock_and_are_swept() {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = now.clone();
        let s = MemoryStorage::with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        let wm = Watermark {
            at_ms: 5,
            ttl_ms: 100,
        };
        let only_key = |k: &str| Invalidation {
            keys: vec![k.to_string()],
            ..Invalidation::default()
        };
        s.invalidate(&only_key("k"), wm).await.unwrap();
        now.store(1_099, Ordering::SeqCst);
        assert!(!s.put(&put("k", &[], 100)).await.unwrap().stored);
        now.store(1_100, Ordering::SeqCst);
        assert!(s.put(&put("k", &[], 100)).await.unwrap().stored);
        // Expired marks stay until there are enough to sweep; then they go.
        for i in 1..MIN_SWEEP_AT - 1 {
            s.invalidate(&only_key(&format!("k{i}")), wm).await.unwrap();
        }
        assert_eq!(s.lock().unwrap().marks.len(), MIN_SWEEP_AT - 1);
        s.invalidate(&only_key("trigger"), wm).await.unwrap();
        assert_eq!(s.lock().unwrap().marks.len(), MIN_SWEEP_AT - 1);
        assert!(!s.lock().unwrap().marks.keys.contains_key("k"));
    }
}
