//! The chain kept in Redis, for the controller in a cluster. Every replica serves the audit
//! service and any of them may append, yet the log stays one chain: an append is a Lua script
//! that adds the entries only if the chain's head is still the one they were linked to
//! (compare-and-set on `{<stream>}:head`), and otherwise answers the current head, so the
//! replica links its batch again and retries. Pods come and go and their disks with them;
//! Redis is where the chain lives (the chart already requires it for the rate-limit and cache
//! services), with the same entries (`XADD <stream> * entry <line>`) `nexus up` copies there.
//!
//! Why not one writer: a leader-only audit service stops taking records for a lease duration
//! at every failover, and a chain per replica leaves as many chains as pods ever lived. Appends
//! are batches (one per proxy per flush interval), so the rare conflict costs one more round
//! trip.
//!
//! Redis without persistence can lose the chain (a restart, a failover to a lagging replica).
//! A replica that then finds the head behind the one it last saw does not start over
//! silently: the first record it appends is `audit.chain_lost`, naming the head it had seen,
//! and the loss is counted (`nexus_audit_chain_losses_total`) and logged.
//!
//! An append whose answer is lost (a timeout after Redis ran the script) is refused to the
//! filter, which sends the batch again: a record may then appear twice, never not at all
//! (at-least-once, as with any queue); each carries its request id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_ratelimit_service::storage::{LazyConnection, LuaScript};
use serde_json::{json, Value};

use super::chain::{self, Head, Verifier};

/// The stream keeps about this many entries (`MAXLEN ~`); `nexus audit verify --redis`
/// checks from the oldest one kept.
pub const MAX_LEN: u64 = 10_000_000;
/// Appends retried after losing a race to another replica before the batch is refused.
const MAX_TRIES: u32 = 16;
/// Entries read per `XRANGE` when verifying.
const PAGE: usize = 1000;

/// KEYS: stream, head, turn. ARGV: expected head, new head, max length, this replica's id,
/// entries... Answers `{1, new head}` when appended, `{0, current head}` when not.
///
/// The turn makes losing a race fair: a replica that lost claims the next turn (for
/// `TURN_MS`), and until it has appended the others are refused too, so the head stays still
/// for its retry. Without it a replica one round trip behind a busy one can lose every time.
const APPEND: &str = r"
local head = redis.call('GET', KEYS[2]) or ''
local turn = redis.call('GET', KEYS[3])
if head ~= ARGV[1] or (turn and turn ~= ARGV[4]) then
  if not turn or turn == ARGV[4] then
    redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  end
  return {0, head}
end
for i = 6, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'entry', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[2])
if turn then
  redis.call('DEL', KEYS[3])
end
return {1, ARGV[2]}
";
/// How long a replica that lost a race keeps the next turn (its retry is one round trip).
const TURN_MS: u64 = 500;

/// What this replica knows of the chain.
struct Known {
    /// The head as of this replica's last append (`None`: ask Redis, e.g. after an error).
    head: Option<Head>,
    /// The furthest head this replica ever saw stored: a head in Redis behind it means lost
    /// entries.
    seen: Head,
}

pub struct RedisChain {
    conn: LazyConnection,
    stream: String,
    head_key: String,
    turn_key: String,
    /// Names this instance in the turn key.
    id: String,
    script: LuaScript,
    /// Held across an append, so this replica's batches are chained in the order they arrived.
    known: tokio::sync::Mutex<Known>,
    /// Appends that lost a race to another replica and were linked again.
    pub conflicts: AtomicU64,
    /// Times Redis held a head behind the one this replica had seen (entries lost).
    pub losses: AtomicU64,
}

impl RedisChain {
    /// A chain in `stream` (the head beside it, in the same Redis Cluster slot). Connects on
    /// first use, so Redis may be down at start.
    pub fn new(redis_url: &str, stream: &str) -> anyhow::Result<Self> {
        Ok(Self {
            conn: LazyConnection::open(redis_url, Duration::from_secs(2))
                .map_err(anyhow::Error::msg)?,
            stream: stream.to_string(),
            head_key: head_key(stream),
            turn_key: format!("{{{stream}}}:turn"),
            id: instance_id(),
            script: LuaScript::new(APPEND),
            known: tokio::sync::Mutex::new(Known {
                head: None,
                seen: Head::genesis(),
            }),
            conflicts: Default::default(),
            losses: Default::default(),
        })
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Links `records` after the chain's head and appends them, all or none; the new head and
    /// the lines appended.
    pub async fn append(&self, mut records: Vec<Value>) -> Result<(Head, Vec<String>), String> {
        let mut known = self.known.lock().await;
        let mut head = match known.head.clone() {
            Some(h) => h,
            None => self.read_head().await?,
        };
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut loss_noted = false;
        for _ in 0..MAX_TRIES {
            if !loss_noted && head.seq < known.seen.seq {
                self.note_loss(&known.seen, &head);
                records.insert(0, chain_lost(&known.seen, &head));
                loss_noted = true;
            }
            let (lines, next) = link_all(&head, time_ms, &records);
            match self.try_append(&head, &next, &lines).await {
                Ok(None) => {
                    known.head = Some(next.clone());
                    known.seen = next.clone();
                    return Ok((next, lines));
                }
                Ok(Some(moved)) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    head = moved;
                }
                Err(e) => {
                    // The script may have run: ask Redis next time.
                    known.head = None;
                    return Err(e);
                }
            }
        }
        known.head = None;
        Err(format!(
            "the chain's head moved {MAX_TRIES} times while appending"
        ))
    }

    fn note_loss(&self, seen: &Head, found: &Head) {
        self.losses.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            stream = %self.stream, last_seen = seen.seq, found = found.seq,
            "the audit chain in Redis is behind the head this replica saw: entries were lost"
        );
    }

    /// `None` when appended, or the head that had moved there.
    async fn try_append(
        &self,
        expected: &Head,
        next: &Head,
        lines: &[String],
    ) -> Result<Option<Head>, String> {
        let mut c = self.conn.get().await?;
        let mut call = self.script.prepare_invoke();
        call.key(&self.stream)
            .key(&self.head_key)
            .key(&self.turn_key)
            .arg(encode(expected))
            .arg(encode(next))
            .arg(MAX_LEN)
            .arg(&self.id)
            .arg(TURN_MS);
        for line in lines {
            call.arg(line);
        }
        let reply: (u8, Option<String>) = call
            .invoke_async(&mut c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        match reply {
            (1, _) => Ok(None),
            (_, moved) => decode(moved.as_deref().unwrap_or_default()).map(Some),
        }
    }

    async fn read_head(&self) -> Result<Head, String> {
        let mut c = self.conn.get().await?;
        let text: Option<String> = redis::cmd("GET")
            .arg(&self.head_key)
            .query_async(&mut c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        decode(text.as_deref().unwrap_or_default())
    }

    /// Checks the stream end to end from its oldest entry kept; the verifier's final state,
    /// or the first broken entry (or why the stream could not be read).
    pub async fn verify(&self) -> Result<Verifier, String> {
        let mut c = self.conn.get().await?;
        let mut verifier = Verifier::from_first_entry();
        let mut from = "-".to_string();
        loop {
            let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut c)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            for (_, fields) in &page {
                let entry = fields
                    .iter()
                    .find(|(k, _)| k == "entry")
                    .map_or("", |(_, v)| v.as_str());
                verifier
                    .check(entry.as_bytes())
                    .map_err(|b| b.to_string())?;
            }
            match page.last() {
                Some((id, _)) if page.len() == PAGE => from = format!("({id}"),
                _ => break,
            }
        }
        self.check_trimmed(&mut c, verifier.first_seq()).await?;
        Ok(verifier)
    }

    /// A stream that starts past record 1 must have been trimmed, which `MAXLEN ~` does only
    /// once it holds at least [`MAX_LEN`] entries: a shorter one had its oldest records removed.
    async fn check_trimmed(
        &self,
        c: &mut nexus_ratelimit_service::storage::RedisConnection,
        first_seq: u64,
    ) -> Result<(), String> {
        if first_seq <= 1 {
            return Ok(());
        }
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        if len < MAX_LEN {
            return Err(format!(
                "record 1 (line 1): the stream starts at record {first_seq} but holds {len} entries, \
                 fewer than it keeps ({MAX_LEN}): records 1 to {} were removed, not trimmed",
                first_seq - 1
            ));
        }
        Ok(())
    }
}

/// The record that opens what follows a loss: what this replica had seen, and where Redis was.
fn chain_lost(seen: &Head, found: &Head) -> Value {
    json!({
        "event": "audit.chain_lost",
        "last_seen": { "seq": seen.seq, "hash": seen.hash },
        "found_seq": found.seq,
    })
}

/// Unique enough among the replicas appending to one chain: host, process, and time.
fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{host}-{}-{nanos}-{n}", std::process::id())
}

/// The head key, hash-tagged to the stream's slot: a key without braces hashes whole, so
/// `{nexus:audit}:head` and `nexus:audit` land in one Redis Cluster slot and one script may
/// touch both.
fn head_key(stream: &str) -> String {
    format!("{{{stream}}}:head")
}

fn link_all(head: &Head, time_ms: u64, records: &[Value]) -> (Vec<String>, Head) {
    let mut head = head.clone();
    let lines = records
        .iter()
        .map(|r| {
            let (line, next) = chain::link(&head, time_ms, r.clone());
            head = next;
            line
        })
        .collect();
    (lines, head)
}

/// `"<seq> <hash>"`; the genesis head is the empty string (no key yet).
fn encode(head: &Head) -> String {
    if head.seq == 0 {
        String::new()
    } else {
        format!("{} {}", head.seq, head.hash)
    }
}

fn decode(text: &str) -> Result<Head, String> {
    if text.is_empty() {
        return Ok(Head::genesis());
    }
    text.split_once(' ')
        .and_then(|(seq, hash)| {
            Some(Head {
                seq: seq.parse().ok()?,
                hash: hash.to_string(),
            })
        })
        .ok_or_else(|| format!("the chain's head in Redis is not \"<seq> <hash>\": {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_the_head_key_shares_the_streams_slot() {
        let head = Head {
            seq: 42,
            hash: "ab".repeat(32),
        };
        assert_eq!(decode(&encode(&head)).unwrap(), head);
        assert_eq!(encode(&Head::genesis()), "");
        assert_eq!(decode("").unwrap(), Head::genesis());
        assert!(decode("x").unwrap_err().contains("not \"<seq> <hash>\""));
        assert_eq!(head_key("nexus:audit"), "{nexus:audit}:head");
    }

    /// The machine's shared Redis, on streams of this test alone.
    const REDIS: &str = "redis://127.0.0.1:6379";

    fn stream(name: &str) -> String {
        format!("nexus:audit:test:{name}:{}", std::process::id())
    }

    async fn cleanup(url: &str, stream: &str) {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(stream)
            .arg(head_key(stream))
            .arg(format!("{{{stream}}}:turn"))
            .query_async(&mut c)
            .await
            .unwrap();
    }

    fn batch(replica: &str, i: u32) -> Vec<Value> {
        (0..3)
            .map(|j| json!({"event": "auth.denied", "replica": replica, "batch": i, "n": j}))
            .collect()
    }

    #[tokio::test]
    async fn replicas_appending_at_once_keep_one_intact_chain() {
        let stream = stream("replicas");
        let (a, b) = (
            RedisChain::new(REDIS, &stream).unwrap(),
            RedisChain::new(REDIS, &stream).unwrap(),
        );
        // A appends, B appends after it, A appends again from the head it knew: A's second
        // batch loses the race, is linked again after B's, and nothing is lost.
        a.append(batch("a", 0)).await.unwrap();
        b.append(batch("b", 0)).await.unwrap();
        let (head, _) = a.append(batch("a", 1)).await.unwrap();
        assert_eq!(head.seq, 9);
        assert_eq!(a.conflicts.load(Ordering::Relaxed), 1);
        // Then both at once, 20 batches each.
        let (ra, rb) = tokio::join!(
            async {
                for i in 2..22 {
                    a.append(batch("a", i)).await.unwrap();
                }
            },
            async {
                for i in 1..21 {
                    b.append(batch("b", i)).await.unwrap();
                }
            }
        );
        let _ = (ra, rb);
        let verified = a.verify().await.unwrap();
        let entries = read_entries(REDIS, &stream).await;
        cleanup(REDIS, &stream).await;
        assert_eq!((verified.first_seq(), verified.head().seq), (1, 129));
        let mut seen: Vec<(String, u64, u64)> = entries
            .iter()
            .map(|e| {
                let r = &e["record"];
                (
                    r["replica"].as_str().unwrap().to_string(),
                    r["batch"].as_u64().unwrap(),
                    r["n"].as_u64().unwrap(),
                )
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 129, "every record once");
        // A batch stays together: its three records are consecutive.
        for w in entries.chunks(3) {
            assert!(w
                .iter()
                .all(|e| e["record"]["batch"] == w[0]["record"]["batch"]
                    && e["record"]["replica"] == w[0]["record"]["replica"]));
        }
    }

    #[tokio::test]
    async fn a_deleted_entry_is_named_by_verify() {
        let stream = stream("deleted");
        let chain = RedisChain::new(REDIS, &stream).unwrap();
        for i in 0..3 {
            chain.append(batch("a", i)).await.unwrap();
        }
        let ids: Vec<String> = xrange(REDIS, &stream)
            .await
            .into_iter()
            .map(|e| e.0)
            .collect();
        xdel(&stream, &[&ids[4]]).await;
        let e = chain.verify().await.err().unwrap();
        let report = crate::audit::verify_stream(REDIS, &stream, None)
            .await
            .unwrap_err()
            .to_string();
        cleanup(REDIS, &stream).await;
        assert_eq!(
            e,
            "record 5 (line 5): holds seq 6 where 5 was expected: a record is missing, repeated or out of order"
        );
        assert!(
            report.contains(&format!("{stream}: broken at record 5")),
            "{report}"
        );
    }

    /// Redis down: the batch is refused and nothing appended; Redis back without its data: the
    /// next batch opens with `audit.chain_lost` naming the head seen, counted.
    #[tokio::test]
    async fn an_outage_refuses_batches_and_a_lost_chain_is_recorded_not_hidden() {
        let mut redis = nexus_ratelimit_service::testkit::PrivateRedis::start();
        let stream = stream("outage");
        let audit = super::super::Audit::new(super::super::service::Store::Redis(Box::new(
            RedisChain::new(&redis.url(), &stream).unwrap(),
        )));
        let body =
            |n: u32| bytes::Bytes::from(format!("{{\"event\":\"auth.denied\",\"n\":{n}}}\n"));
        let head = audit.append_batch(body(1)).await.unwrap();
        assert_eq!(head["seq"], 1);
        redis.stop();
        let (status, why) = audit.append_batch(body(2)).await.unwrap_err();
        assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.ends_with("nothing of this batch was appended"), "{why}");
        redis.restart(); // no persistence: the chain is gone
        let head = audit.append_batch(body(3)).await.unwrap();
        assert_eq!(head["seq"], 2, "the loss record, then the batch");
        let entries = read_entries(&redis.url(), &stream).await;
        assert_eq!(entries[0]["record"]["event"], "audit.chain_lost");
        assert_eq!(entries[0]["record"]["last_seen"]["seq"], 1);
        assert_eq!(entries[0]["record"]["found_seq"], 0);
        assert_eq!(entries[1]["record"]["n"], 3);
        let metrics = audit.render();
        assert!(
            metrics.contains("nexus_audit_chain_losses_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("nexus_audit_batches_refused_total 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("nexus_audit_records_appended_total 2\n"),
            "{metrics}"
        );
    }

    async fn read_entries(url: &str, stream: &str) -> Vec<Value> {
        xrange(url, stream).await.into_iter().map(|e| e.1).collect()
    }

    /// The stream's entries: id and the chained entry.
    async fn xrange(url: &str, stream: &str) -> Vec<(String, Value)> {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        reply
            .into_iter()
            .map(|(id, f)| (id, serde_json::from_str(&f[0].1).unwrap()))
            .collect()
    }

    async fn xdel(stream: &str, ids: &[&str]) {
        let client = redis::Client::open(REDIS).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("XDEL")
            .arg(stream)
            .arg(ids)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_oldest_entries_removed_from_a_short_stream_are_named_not_taken_for_trimming() {
        let stream = stream("head-removed");
        let chain = RedisChain::new(REDIS, &stream).unwrap();
        chain.append(batch("a", 0)).await.unwrap();
        let ids: Vec<String> = xrange(REDIS, &stream)
            .await
            .into_iter()
            .map(|e| e.0)
            .collect();
        xdel(&stream, &[&ids[0], &ids[1]]).await;
        let e = chain.verify().await.err().unwrap();
        cleanup(REDIS, &stream).await;
        assert_eq!(
            e,
            format!(
                "record 1 (line 1): the stream starts at record 3 but holds 1 entries, fewer than \
                 it keeps ({MAX_LEN}): records 1 to 2 were removed, not trimmed"
            )
        );
    }
}
