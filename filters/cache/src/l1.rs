//! The L1: responses in Envoy's shared data, seen by every worker of one proxy.
//!
//! Shared data can neither enumerate nor delete keys, so the store keeps its own bookkeeping:
//! - `nexus_cache/gen`: the generation. Entries carry the generation they were stored under
//!   (read when the request *started*), and only entries of the current generation are hits,
//!   so "flush everything" is one CAS increment, and a response fetched across a flush is
//!   never served.
//! - `nexus_cache/cursor` and `nexus_cache/slot/<i>`: a ring of the last `max_entries` stores.
//!   Each store takes the next sequence number (CAS) and its slot; the key previously in that
//!   slot is overwritten with an empty tombstone, unless it was re-stored since (its entry
//!   carries a newer sequence). That bounds live entries to `max_entries` (FIFO eviction).
//! - `nexus_cache/e/<key>`: the entry (empty = absent).
//! - `nexus_cache/epoch`: bumped by every invalidation event. A response fetched while an
//!   invalidation arrived is not stored (it may predate the invalidation): the store checks
//!   the epoch read when its request started, writes, then checks again and tombstones its
//!   own write if an invalidation slipped in between (the invalidation bumps before it
//!   removes, so one of the two sides always sees the other).
//!
//! Tombstoned keys stay as empty values: shared data offers no delete, so memory per distinct
//! key ever stored is its name. Bodies are bounded by `max_object_bytes`.

use nexus_filter_core::host::SharedDataError;
use nexus_filter_core::SharedData;
use nexus_proto::cache::CachedResponse;
use prost::Message;

const GEN_KEY: &str = "nexus_cache/gen";
const CURSOR_KEY: &str = "nexus_cache/cursor";
const EPOCH_KEY: &str = "nexus_cache/epoch";
const FORMAT: u8 = 1;
/// CAS retries before giving up (another worker keeps winning: skip, never spin).
const CAS_TRIES: usize = 8;

fn entry_key(key: &str) -> String {
    format!("nexus_cache/e/{key}")
}

fn slot_key(slot: u64) -> String {
    format!("nexus_cache/slot/{slot}")
}

/// A stored copy's version, as the service orders them: (timestamp, writer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub timestamp_ms: u64,
    pub writer: String,
}

fn read_u64(shared: &impl SharedData, key: &str) -> (u64, Option<u32>) {
    match shared.get(key) {
        Some((v, cas)) => (
            v.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0),
            Some(cas),
        ),
        None => (0, None),
    }
}

/// Atomically adds one; `None` if other workers kept winning or the host refused.
fn increment(shared: &impl SharedData, key: &str) -> Option<u64> {
    for _ in 0..CAS_TRIES {
        let (v, cas) = read_u64(shared, key);
        let next = v.wrapping_add(1);
        match shared.set(key, &next.to_le_bytes(), Some(cas.unwrap_or(0))) {
            Ok(()) => return Some(next),
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => return None,
        }
    }
    None
}

/// The current generation (0 before the first flush).
pub fn generation(shared: &impl SharedData) -> u64 {
    read_u64(shared, GEN_KEY).0
}

/// Drops every entry at once; returns the new generation, or `None` when the CAS kept losing
/// (then another worker's concurrent increment has flushed anyway).
pub fn flush(shared: &impl SharedData) -> Option<u64> {
    increment(shared, GEN_KEY)
}

/// The invalidation epoch (see the module docs).
pub fn epoch(shared: &impl SharedData) -> u64 {
    read_u64(shared, EPOCH_KEY).0
}

/// Marks that an invalidation is being applied: call before removing anything.
pub fn bump_epoch(shared: &impl SharedData) {
    // If the CAS keeps losing, other invalidations are bumping it: the epoch moved anyway.
    let _ = increment(shared, EPOCH_KEY);
}

/// [`put`], unless an invalidation arrived since `epoch` was read; returns whether stored.
#[allow(clippy::too_many_arguments)]
pub fn put_unless_invalidated(
    shared: &impl SharedData,
    max_entries: u32,
    key: &str,
    generation: u64,
    epoch: u64,
    version: Version,
    response: &CachedResponse,
) -> bool {
    if self::epoch(shared) != epoch {
        return false;
    }
    if !put(shared, max_entries, key, generation, version, response) {
        return false;
    }
    if self::epoch(shared) != epoch {
        remove(shared, key);
        return false;
    }
    true
}

struct Header {
    generation: u64,
    seq: u64,
    version: Version,
}

fn encode(h: &Header, response: &[u8]) -> Vec<u8> {
    let writer = h.version.writer.as_bytes();
    let writer = &writer[..writer.len().min(255)];
    let mut v = Vec::with_capacity(26 + writer.len() + response.len());
    v.push(FORMAT);
    v.extend_from_slice(&h.generation.to_le_bytes());
    v.extend_from_slice(&h.seq.to_le_bytes());
    v.extend_from_slice(&h.version.timestamp_ms.to_le_bytes());
    v.push(writer.len() as u8);
    v.extend_from_slice(writer);
    v.extend_from_slice(response);
    v
}

fn decode(v: &[u8]) -> Option<(Header, &[u8])> {
    let u64_at = |at: usize| -> Option<u64> {
        v.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if v.first() != Some(&FORMAT) {
        return None;
    }
    let wlen = usize::from(*v.get(25)?);
    let writer = std::str::from_utf8(v.get(26..26 + wlen)?).ok()?;
    Some((
        Header {
            generation: u64_at(1)?,
            seq: u64_at(9)?,
            version: Version {
                timestamp_ms: u64_at(17)?,
                writer: writer.to_string(),
            },
        },
        v.get(26 + wlen..)?,
    ))
}

/// A fresh entry of the current generation.
pub fn get(shared: &impl SharedData, key: &str, now_ms: u64) -> Option<CachedResponse> {
    get_at(shared, key, generation(shared), now_ms)
}

/// A fresh entry of `generation`, which the caller has just read (one shared-data read fewer
/// on the request path).
pub fn get_at(
    shared: &impl SharedData,
    key: &str,
    generation: u64,
    now_ms: u64,
) -> Option<CachedResponse> {
    let (v, _) = shared.get(&entry_key(key))?;
    let (h, body) = decode(&v)?;
    if h.generation != generation {
        return None;
    }
    let resp = CachedResponse::decode(body).ok()?;
    (resp.expires_at_ms > now_ms).then_some(resp)
}

/// The stored version of `key`, whatever its generation or freshness.
pub fn version(shared: &impl SharedData, key: &str) -> Option<Version> {
    let (v, _) = shared.get(&entry_key(key))?;
    decode(&v).map(|(h, _)| h.version)
}

/// Stores `response` under `generation` (read when the request started). Returns whether it
/// was stored; a failure only costs a future miss.
pub fn put(
    shared: &impl SharedData,
    max_entries: u32,
    key: &str,
    generation: u64,
    version: Version,
    response: &CachedResponse,
) -> bool {
    let Some(seq) = increment(shared, CURSOR_KEY) else {
        return false;
    };
    let slot = seq % u64::from(max_entries.max(1));
    let slot_name = slot_key(slot);
    if let Some((old, _)) = shared.get(&slot_name) {
        if let Ok(old_key) = std::str::from_utf8(&old) {
            // Evict what this slot held, unless that key was stored again in a later slot.
            let old_entry = entry_key(old_key);
            let superseded = shared
                .get(&old_entry)
                .and_then(|(v, _)| decode(&v).map(|(h, _)| h.seq))
                .is_some_and(|s| s > seq.saturating_sub(u64::from(max_entries.max(1))));
            if !old_key.is_empty() && !superseded {
                let _ = shared.set(&old_entry, &[], None);
            }
        }
    }
    if shared.set(&slot_name, key.as_bytes(), None).is_err() {
        return false;
    }
    let header = Header {
        generation,
        seq,
        version,
    };
    shared
        .set(
            &entry_key(key),
            &encode(&header, &response.encode_to_vec()),
            None,
        )
        .is_ok()
}

/// Tombstones `key`.
pub fn remove(shared: &impl SharedData, key: &str) {
    // Only write when there is something: most invalidated keys were never stored here.
    if shared
        .get(&entry_key(key))
        .is_some_and(|(v, _)| !v.is_empty())
    {
        let _ = shared.set(&entry_key(key), &[], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_filter_core::testing::MemSharedData;

    fn resp(body: &str, expires_at_ms: u64) -> CachedResponse {
        CachedResponse {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            stored_at_ms: 1,
            expires_at_ms,
        }
    }

    fn v(ts: u64) -> Version {
        Version {
            timestamp_ms: ts,
            writer: "w".into(),
        }
    }

    fn live(shared: &MemSharedData, now: u64) -> usize {
        shared
            .0
            .borrow()
            .keys()
            .filter(|k| k.starts_with("nexus_cache/e/"))
            .filter(|k| get(shared, &k["nexus_cache/e/".len()..], now).is_some())
            .count()
    }

    #[test]
    fn put_get_and_ttl() {
        let s = MemSharedData::default();
        assert!(put(&s, 4, "/a#1", 0, v(5), &resp("A", 100)));
        assert_eq!(get(&s, "/a#1", 99).unwrap().body, b"A");
        assert!(get(&s, "/a#1", 100).is_none(), "expired");
        assert!(get(&s, "/b#1", 0).is_none());
        assert_eq!(version(&s, "/a#1"), Some(v(5)));
    }

    #[test]
    fn eviction_keeps_at_most_max_entries() {
        let s = MemSharedData::default();
        for i in 0..10 {
            assert!(put(&s, 3, &format!("/k{i}#d"), 0, v(i), &resp("x", 1000)));
        }
        assert_eq!(live(&s, 0), 3);
        for i in 7..10 {
            assert!(
                get(&s, &format!("/k{i}#d"), 0).is_some(),
                "newest kept: {i}"
            );
        }
        // Re-storing a key keeps it alive when its old slot is recycled.
        let s = MemSharedData::default();
        put(&s, 2, "/x#d", 0, v(1), &resp("1", 1000));
        put(&s, 2, "/y#d", 0, v(1), &resp("1", 1000));
        put(&s, 2, "/x#d", 0, v(2), &resp("2", 1000)); // evicts slot of first /x: superseded
        assert_eq!(get(&s, "/x#d", 0).unwrap().body, b"2");
        assert!(get(&s, "/y#d", 0).is_some());
        put(&s, 2, "/z#d", 0, v(1), &resp("1", 1000)); // evicts /y
        assert!(get(&s, "/y#d", 0).is_none());
        assert_eq!(live(&s, 0), 2);
    }

    #[test]
    fn a_flush_is_one_generation_bump() {
        let s = MemSharedData::default();
        let g = generation(&s);
        put(&s, 8, "/a#1", g, v(1), &resp("A", 1000));
        assert_eq!(flush(&s), Some(g + 1));
        assert!(get(&s, "/a#1", 0).is_none());
        // A response fetched before the flush but stored after it is a miss too.
        put(&s, 8, "/b#1", g, v(1), &resp("B", 1000));
        assert!(get(&s, "/b#1", 0).is_none());
        put(&s, 8, "/b#1", g + 1, v(1), &resp("B", 1000));
        assert!(get(&s, "/b#1", 0).is_some());
    }

    #[test]
    fn an_invalidation_during_the_fetch_keeps_the_response_out() {
        let s = MemSharedData::default();
        let e = epoch(&s);
        bump_epoch(&s);
        assert!(!put_unless_invalidated(
            &s,
            8,
            "/a#1",
            0,
            e,
            v(1),
            &resp("A", 1000)
        ));
        assert!(get(&s, "/a#1", 0).is_none());
        let e = epoch(&s);
        assert!(put_unless_invalidated(
            &s,
            8,
            "/a#1",
            0,
            e,
            v(1),
            &resp("A", 1000)
        ));
        assert!(get(&s, "/a#1", 0).is_some());
    }

    #[test]
    fn remove_tombstones() {
        let s = MemSharedData::default();
        put(&s, 8, "/a#1", 0, v(1), &resp("A", 1000));
        remove(&s, "/a#1");
        assert!(get(&s, "/a#1", 0).is_none());
        assert_eq!(version(&s, "/a#1"), None);
        remove(&s, "/never#1");
        assert!(
            s.get("nexus_cache/e//never#1").is_none(),
            "no write for absent keys"
        );
    }
}
