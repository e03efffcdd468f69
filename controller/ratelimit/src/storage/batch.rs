//! Concurrent decisions coalesced into Redis round trips.
//!
//! Every call's counter operations are queued to one task per storage, which sends whatever is
//! queued as one pipeline as soon as the previous pipeline was answered: under load, the
//! decisions of many concurrent calls share one write, one Redis read and one reply, instead of
//! a round trip (and two system calls on each side) each. Alone, a call waits for nothing but
//! its own round trip. Each operation stays atomic on its own (`INCRBY`, or the GCRA script),
//! so coalescing changes no decision.
//!
//! On a Redis Cluster a pipeline may only touch one hash slot, so the queued operations are
//! split into one pipeline per slot, sent concurrently (the cluster connection multiplexes
//! those bound for one node onto its one connection). A slot whose primary is down (a
//! failover) fails only the calls that touch it.

use std::sync::{Arc, OnceLock};

use redis::cluster_routing::Slot;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::connection::{LazyConnection, RedisConnection};
use super::StorageError;

/// Calls (not counters) sent in one pipeline at most, so one round trip stays short.
const MAX_CALLS_PER_PIPELINE: usize = 256;

/// One counter operation.
pub(super) enum Op {
    /// Fixed window: add `hits`, and keep the window's key until `ttl_ms` after now.
    Incr { key: String, hits: u32, ttl_ms: u64 },
    /// GCRA: the script over one key, with its arguments.
    Gcra { key: String, args: [u64; 4] },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Incr { key, .. } | Op::Gcra { key, .. } => key,
        }
    }
}

/// An operation's answer: the count after `Incr`; `(admitted, stored TAT)` after `Gcra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    Count(u64),
    Gcra(u8, u64),
}

struct Call {
    ops: Vec<Op>,
    answer: oneshot::Sender<Result<Vec<Reply>, StorageError>>,
}

/// The queue to a storage's pipelining task, started on first use (inside the runtime). One
/// storage serves one algorithm, so a pipeline never mixes the two kinds of operation.
pub(super) struct Batcher {
    queue: OnceLock<mpsc::UnboundedSender<Call>>,
    gcra: Gcra,
}

/// The GCRA script: its code (to load it) and its hash (to call it).
#[derive(Clone)]
struct Gcra {
    code: &'static str,
    script: redis::Script,
}

impl Batcher {
    pub fn new(gcra_code: &'static str) -> Self {
        Self {
            queue: OnceLock::new(),
            gcra: Gcra {
                code: gcra_code,
                script: redis::Script::new(gcra_code),
            },
        }
    }

    /// Runs `ops` in the next pipeline; one reply per op, in order.
    pub async fn run(
        &self,
        conn: &Arc<LazyConnection>,
        ops: Vec<Op>,
    ) -> Result<Vec<Reply>, StorageError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(pipelining(rx, conn.clone(), self.gcra.clone()));
            tx
        });
        let (answer, answered) = oneshot::channel();
        queue
            .send(Call { ops, answer })
            .map_err(|_| StorageError("redis pipelining task is gone".into()))?;
        answered
            .await
            .map_err(|_| StorageError("redis pipelining task dropped the call".into()))?
    }
}

/// Sends what is queued as one pipeline, answers each call, and goes on until every sender is
/// gone.
async fn pipelining(
    mut queue: mpsc::UnboundedReceiver<Call>,
    conn: Arc<LazyConnection>,
    gcra: Gcra,
) {
    while let Some(first) = queue.recv().await {
        let mut calls = vec![first];
        while calls.len() < MAX_CALLS_PER_PIPELINE {
            match queue.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        // A caller that gave up (its deadline passed while Redis was slow) is not counted.
        calls.retain(|c| !c.answer.is_closed());
        if calls.is_empty() {
            continue;
        }
        let ops = calls_ops(&calls);
        let replies = match conn.get().await {
            Ok(c) => send_by_slot(c, &gcra, &ops).await,
            Err(e) => vec![Err(StorageError(e)); ops.len()],
        };
        answer(calls, replies);
    }
}

fn calls_ops(calls: &[Call]) -> Vec<&Op> {
    calls.iter().flat_map(|c| c.ops.iter()).collect()
}

/// One reply (or error) per op: a single Redis gets one pipeline, a cluster one pipeline per
/// hash slot, concurrently.
async fn send_by_slot(
    conn: RedisConnection,
    gcra: &Gcra,
    ops: &[&Op],
) -> Vec<Result<Reply, StorageError>> {
    let groups = slot_groups(conn.is_cluster(), ops);
    let sent = futures::future::join_all(groups.iter().map(|group| {
        let mut conn = conn.clone();
        let mine: Vec<&Op> = group.iter().map(|&i| ops[i]).collect();
        async move { send(&mut conn, gcra, &mine).await }
    }))
    .await;
    let mut replies = vec![Err(StorageError("redis: no reply".into())); ops.len()];
    for (group, result) in groups.iter().zip(sent) {
        match result {
            Ok(values) => {
                for (&i, v) in group.iter().zip(values) {
                    replies[i] = Ok(v);
                }
            }
            Err(e) => group.iter().for_each(|&i| replies[i] = Err(e.clone())),
        }
    }
    replies
}

/// The indices of `ops` per pipeline: all in one, or (on a cluster) one group per hash slot.
fn slot_groups(cluster: bool, ops: &[&Op]) -> Vec<Vec<usize>> {
    if !cluster {
        return vec![(0..ops.len()).collect()];
    }
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let slot = Slot::for_key(op.key());
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// One pipeline of `ops`; when Redis does not know the GCRA script (first use, a restarted
/// Redis, a replica just promoted by a failover) it is sent once more with the script's code
/// (`EVAL`, which also caches it on that node).
async fn send(
    conn: &mut RedisConnection,
    gcra: &Gcra,
    ops: &[&Op],
) -> Result<Vec<Reply>, StorageError> {
    let values: Vec<Value> = match pipeline(gcra, ops, false).query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            pipeline(gcra, ops, true)
                .query_async(conn)
                .await
                .map_err(redis_error)?
        }
        other => other.map_err(redis_error)?,
    };
    if values.len() != ops.len() {
        return Err(StorageError(format!(
            "redis answered {} of {} operations",
            values.len(),
            ops.len()
        )));
    }
    ops.iter().zip(values).map(|(op, v)| reply(op, v)).collect()
}

/// `INCRBY` + `PEXPIRE` per fixed-window counter (as envoyproxy/ratelimit does: `INCRBY` alone
/// is atomic, and every call in a window sets the same expiry), `EVALSHA` (or, with `code`,
/// `EVAL`) per GCRA counter.
fn pipeline(gcra: &Gcra, ops: &[&Op], code: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for op in ops {
        match op {
            Op::Incr { key, hits, ttl_ms } => {
                pipe.cmd("INCRBY").arg(key).arg(*hits);
                pipe.cmd("PEXPIRE").arg(key).arg(*ttl_ms).ignore();
            }
            Op::Gcra { key, args } => {
                let (command, script) = if code {
                    ("EVAL", gcra.code)
                } else {
                    ("EVALSHA", gcra.script.get_hash())
                };
                pipe.cmd(command).arg(script).arg(1).arg(key).arg(&args[..]);
            }
        }
    }
    pipe
}

fn reply(op: &Op, value: Value) -> Result<Reply, StorageError> {
    let parsed = match op {
        Op::Incr { .. } => redis::from_redis_value::<u64>(value).map(Reply::Count),
        Op::Gcra { .. } => {
            redis::from_redis_value::<(u8, u64)>(value).map(|(ok, tat)| Reply::Gcra(ok, tat))
        }
    };
    parsed.map_err(|e| StorageError(format!("redis: unexpected reply: {e}")))
}

/// Hands each call its share of the replies: all of them, or the first error among them.
fn answer(calls: Vec<Call>, replies: Vec<Result<Reply, StorageError>>) {
    let mut replies = replies.into_iter();
    for call in calls {
        let mine: Result<Vec<Reply>, StorageError> =
            replies.by_ref().take(call.ops.len()).collect();
        let _ = call.answer.send(mine);
    }
}

fn redis_error(e: redis::RedisError) -> StorageError {
    StorageError(format!("redis: {e}"))
}
