//! The hash chain: each entry carries the hash of the one before, so changing, removing or
//! reordering any entry breaks every link after it, and `verify` names the first break.
//!
//! One entry per line (JSON): `{"seq": 1, "time_ms": ..., "prev": "<hex>", "record": {...},
//! "hash": "<hex>"}`. `hash` is the SHA-256 of the canonical JSON (keys sorted, no spaces) of
//! the entry without `hash`; the first entry's `prev` is 64 zeros.

use std::io::BufRead;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where the chain stands: the last entry's number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Self {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// The entry that follows `head`, as its line (without the newline), and the new head.
pub fn link(head: &Head, time_ms: u64, record: Value) -> (String, Head) {
    let seq = head.seq + 1;
    let mut entry = json!({ "seq": seq, "time_ms": time_ms, "prev": head.hash, "record": record });
    let hash = hex(&Sha256::digest(canonical(&entry).as_bytes()));
    entry["hash"] = Value::String(hash.clone());
    (canonical(&entry), Head { seq, hash })
}

/// JSON with object keys sorted and no whitespace: one byte string per value, whatever map
/// order the serde_json build uses.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first entry that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// 1-based position among the entries checked (a file's line, a stream's entry).
    pub line: u64,
    /// The entry number expected there.
    pub seq: u64,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record {} (line {}): {}",
            self.seq, self.line, self.reason
        )
    }
}

/// Checks a whole log from its first line; the head on success.
pub fn verify(reader: impl BufRead) -> Result<Head, Broken> {
    let mut verifier = Verifier::from_genesis();
    for line in reader.split(b'\n') {
        match line {
            Ok(bytes) => verifier.check(&bytes)?,
            Err(e) => return Err(verifier.broken(format!("unreadable: {e}"))),
        }
    }
    Ok(verifier.head)
}

/// Checks entries one at a time, in order: a file read line by line, or a Redis stream read
/// page by page.
pub struct Verifier {
    head: Head,
    /// Entries checked so far (the 1-based position of the next one is `checked + 1`).
    checked: u64,
    /// Whether the first entry may start past record 1 (a trimmed stream).
    anchor_at_first: bool,
}

impl Verifier {
    /// For a whole log: the first entry must be record 1, linked to [`GENESIS`].
    pub fn from_genesis() -> Self {
        Self {
            head: Head::genesis(),
            checked: 0,
            anchor_at_first: false,
        }
    }

    /// For a log whose oldest entries may have been trimmed (a Redis stream kept at `MAXLEN`):
    /// the first entry present is taken as it claims to be (its `seq` and `prev`), and every
    /// link after it is checked. What was trimmed cannot be checked; [`Verifier::first_seq`]
    /// says where checking began.
    pub fn from_first_entry() -> Self {
        Self {
            anchor_at_first: true,
            ..Self::from_genesis()
        }
    }

    /// Checks the next entry.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), Broken> {
        if self.anchor_at_first && self.checked == 0 {
            if let Some(anchor) = claimed_predecessor(bytes) {
                self.head = anchor;
            }
        }
        self.head = check_entry(&self.head, bytes).map_err(|reason| self.broken(reason))?;
        self.checked += 1;
        Ok(())
    }

    /// Where the chain stands after the entries checked.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The record number checking began at (1 unless the oldest entries were trimmed).
    pub fn first_seq(&self) -> u64 {
        self.head.seq + 1 - self.checked
    }

    fn broken(&self, reason: String) -> Broken {
        Broken {
            line: self.checked + 1,
            seq: self.head.seq + 1,
            reason,
        }
    }
}

/// The head an entry says came before it (`seq - 1`, `prev`), if it says.
fn claimed_predecessor(bytes: &[u8]) -> Option<Head> {
    let entry: Map<String, Value> = serde_json::from_slice(bytes).ok()?;
    let seq = entry.get("seq")?.as_u64()?.checked_sub(1)?;
    let hash = entry.get("prev")?.as_str()?.to_string();
    Some(Head { seq, hash })
}

/// One entry against the head before it; the new head.
fn check_entry(head: &Head, bytes: &[u8]) -> Result<Head, String> {
    let entry: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JSON object ({e}): the line was changed or cut"))?;
    let seq = entry.get("seq").and_then(Value::as_u64);
    if seq != Some(head.seq + 1) {
        return Err(format!(
            "holds seq {} where {} was expected: a record is missing, repeated or out of order",
            seq.map_or("none".to_string(), |s| s.to_string()),
            head.seq + 1
        ));
    }
    let stated = entry
        .get("hash")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut unhashed = entry.clone();
    unhashed.remove("hash");
    let actual = hex(&Sha256::digest(
        canonical(&Value::Object(unhashed)).as_bytes(),
    ));
    if stated != actual {
        return Err(
            "its hash does not match its content: it was changed after it was written".to_string(),
        );
    }
    if entry.get("prev").and_then(Value::as_str) != Some(head.hash.as_str()) {
        return Err(format!(
            "its prev is not the hash of record {}: a record before it was changed, removed or reordered",
            head.seq
        ));
    }
    Ok(Head {
        seq: head.seq + 1,
        hash: actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<String> {
        let mut head = Head::genesis();
        (1..=n)
            .map(|i| {
                let (line, next) = link(&head, 1000 + i, json!({"event": "guard.blocked", "n": i}));
                head = next;
                line
            })
            .collect()
    }

    fn check(lines: &[String]) -> Result<Head, Broken> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        verify(text.as_bytes())
    }

    #[test]
    fn an_appended_log_verifies_to_its_head() {
        let lines = log(5);
        let head = check(&lines).unwrap();
        assert_eq!(head.seq, 5);
        let last: Value = serde_json::from_str(&lines[4]).unwrap();
        assert_eq!(head.hash, last["hash"]);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(check(&[]).unwrap(), Head::genesis());
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b": [ {"z": 1, "a": "x\"y"} ], "a": null}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":null,"b":[{"a":"x\"y","z":1}]}"#);
    }

    #[test]
    fn one_changed_byte_names_that_record() {
        let mut lines = log(5);
        lines[2] = lines[2].replace("\"n\":3", "\"n\":4");
        let b = check(&lines).unwrap_err();
        assert_eq!((b.seq, b.line), (3, 3), "{b}");
        assert!(b.reason.contains("hash does not match"), "{b}");
        // A byte that breaks the JSON itself.
        let mut lines = log(5);
        lines[3].replace_range(0..1, "[");
        let b = check(&lines).unwrap_err();
        assert_eq!((b.seq, b.line), (4, 4), "{b}");
        assert!(b.reason.contains("not a JSON object"), "{b}");
    }

    #[test]
    fn a_rewritten_record_with_a_fresh_hash_breaks_the_next_link() {
        let mut lines = log(4);
        let mut entry: Value = serde_json::from_str(&lines[1]).unwrap();
        entry["record"]["n"] = json!(99);
        entry.as_object_mut().unwrap().remove("hash");
        entry["hash"] = json!(hex(&Sha256::digest(canonical(&entry).as_bytes())));
        lines[1] = canonical(&entry);
        let b = check(&lines).unwrap_err();
        assert_eq!((b.seq, b.line), (3, 3), "{b}");
        assert!(b.reason.contains("prev is not the hash of record 2"), "{b}");
    }

    #[test]
    fn a_deleted_record_is_named_where_it_is_missing() {
        let mut lines = log(5);
        lines.remove(1);
        let b = check(&lines).unwrap_err();
        assert_eq!((b.seq, b.line), (2, 2), "{b}");
        assert!(b.reason.contains("holds seq 3 where 2 was expected"), "{b}");
    }

    #[test]
    fn reordered_records_are_named_at_the_first_swap() {
        let mut lines = log(5);
        lines.swap(2, 3);
        let b = check(&lines).unwrap_err();
        assert_eq!((b.seq, b.line), (3, 3), "{b}");
        assert!(b.reason.contains("holds seq 4 where 3 was expected"), "{b}");
    }

    #[test]
    fn a_trimmed_log_is_checked_from_its_first_entry_present() {
        let lines = log(6);
        let mut verifier = Verifier::from_first_entry();
        for line in &lines[3..] {
            verifier.check(line.as_bytes()).unwrap();
        }
        assert_eq!((verifier.first_seq(), verifier.head().seq), (4, 6));
        // Trimmed or not, a gap after the first entry present is still named.
        let mut verifier = Verifier::from_first_entry();
        verifier.check(lines[2].as_bytes()).unwrap();
        let b = verifier.check(lines[4].as_bytes()).unwrap_err();
        assert_eq!((b.seq, b.line), (4, 2), "{b}");
        // From genesis, the same first entry is a break.
        let b = Verifier::from_genesis()
            .check(lines[2].as_bytes())
            .unwrap_err();
        assert!(b.reason.contains("holds seq 3 where 1 was expected"), "{b}");
    }
}
