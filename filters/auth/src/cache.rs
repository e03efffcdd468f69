//! The verified-token cache, in shared data so every worker sees one copy.
//!
//! A direct-mapped table of `max_entries` slots: the SHA-256 of the token picks the slot (key
//! `<prefix>tok.<n>`), and the slot holds the full hash, the expiry and the claims the filter
//! needs. A different token landing in the same slot evicts the previous one, so the table
//! never grows past `max_entries` keys. An entry is only trusted if its hash equals the token's
//! and it has not expired; a corrupt entry is a miss.

use nexus_filter_core::SharedData;

pub struct Entry {
    pub provider: u16,
    pub expires_s: u64,
    pub claims: Vec<u8>,
}

fn slot(prefix: &str, hash: &[u8; 32], entries: u32) -> String {
    let n = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % entries.max(1);
    format!("{prefix}tok.{n}")
}

pub fn get(
    shared: &dyn SharedData,
    prefix: &str,
    entries: u32,
    hash: &[u8; 32],
    now_s: u64,
) -> Option<Entry> {
    let (value, _) = shared.get(&slot(prefix, hash, entries))?;
    if value.len() < 42 || value[..32] != hash[..] {
        return None;
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&value[32..40]);
    let expires_s = u64::from_be_bytes(exp);
    if now_s >= expires_s {
        return None;
    }
    Some(Entry {
        provider: u16::from_be_bytes([value[40], value[41]]),
        expires_s,
        claims: value[42..].to_vec(),
    })
}

pub fn put(shared: &dyn SharedData, prefix: &str, entries: u32, hash: &[u8; 32], entry: &Entry) {
    let mut value = Vec::with_capacity(42 + entry.claims.len());
    value.extend_from_slice(hash);
    value.extend_from_slice(&entry.expires_s.to_be_bytes());
    value.extend_from_slice(&entry.provider.to_be_bytes());
    value.extend_from_slice(&entry.claims);
    // Best effort: a failed write only costs a later verification.
    let _ = shared.set(&slot(prefix, hash, entries), &value, None);
}

/// Drops the entry of `hash`, if its slot holds it (a revocation).
pub fn remove(shared: &dyn SharedData, prefix: &str, entries: u32, hash: &[u8; 32]) -> bool {
    let key = slot(prefix, hash, entries);
    match shared.get(&key) {
        Some((value, cas)) if value.len() >= 32 && value[..32] == hash[..] => {
            // An empty value is a miss for `get`; a lost race means the slot changed anyway.
            shared.set(&key, b"", Some(cas)).is_ok()
        }
        _ => false,
    }
}

/// Empties every slot (the table may hold sessions whose revocation was missed).
pub fn clear(shared: &dyn SharedData, prefix: &str, entries: u32) {
    for n in 0..entries.max(1) {
        // Best effort, like `put`: a slot that cannot be written is one more lookup to come.
        let _ = shared.set(&format!("{prefix}tok.{n}"), b"", None);
    }
}
