//! Event fan-out: every `Put` and `Invalidate` on any replica reaches every `Subscribe` stream of
//! every replica.
//!
//! [`MemoryBus`] is a tokio broadcast channel (one replica). [`RedisBus`] publishes to the Redis
//! channels `cache.invalidate` and `cache.update` (payload: the protobuf-encoded
//! `nexus.cache.v1.Event`), and runs one subscriber task per replica that rebroadcasts what it
//! hears to the replica's local streams.
//!
//! Redis pub/sub is at-most-once: a message published while a subscriber's connection is down
//! is lost for it. So whenever this replica's feed may have a gap (its pub/sub connection broke,
//! and again once it is subscribed anew) every local stream gets a `Flush`, and no stale local
//! copy outlives a lost event. Streams stay open while Redis is down: the replica is still
//! there, and will flush again when its feed is back. A stream opened while the feed is down
//! gets its `Hello` only once the feed is live (until then the filter keeps off its L1).
//!
//! On a Redis Cluster (`redis+cluster://`) a `PUBLISH` to any node reaches the subscribers of
//! every node (classic pub/sub travels the cluster bus), so the subscriber holds one
//! connection to one node and publishes go through the cluster connection. When its node
//! fails (a failover), the connection breaks: the streams are flushed, and it subscribes
//! again on the next seed node that answers (and flushes again), so a failover costs the
//! filters their L1 copies, never a stale one. What remains: a message a node accepted and
//! then crashed before forwarding over the cluster bus is lost for subscribers on other
//! nodes without a break of their own connection (the L2 itself is correct: the
//! invalidation was stored first, and only its event is lost).

use std::time::Duration;

use futures::StreamExt;
use nexus_proto::cache::{event, Event, Flush};
use prost::Message;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::storage::{LazyConnection, RedisNamespace, StorageError};
use nexus_ratelimit_service::storage::RedisTarget;

/// Events a slow stream may fall behind before it is flushed instead (see [`Bus::subscribe`]).
const LOCAL_BACKLOG: usize = 4096;

#[tonic::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends an `Invalidation`, `Flush` or `Update` to every replica's subscribers (this one's
    /// included).
    async fn publish(&self, event: &Event) -> Result<(), StorageError>;

    /// This replica's feed of events. A receiver that falls more than its backlog behind gets
    /// `Lagged`, which the service turns into a `Flush` for that stream.
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    /// True while events from every replica can arrive (memory: always; Redis: while this
    /// replica is subscribed). A stream's `Hello` waits for it.
    fn live(&self) -> watch::Receiver<bool>;

    /// Waits (at most `within`) until the feed is live; false if it did not get there.
    async fn wait_live(&self, within: Duration) -> bool {
        let mut live = self.live();
        tokio::time::timeout(within, live.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn describe(&self) -> String;
}

pub fn flush(reason: impl Into<String>) -> Event {
    Event {
        kind: Some(event::Kind::Flush(Flush {
            reason: reason.into(),
        })),
    }
}

/// One replica: events go straight to its own streams.
pub struct MemoryBus {
    local: broadcast::Sender<Event>,
    live: watch::Sender<bool>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self {
            local: broadcast::channel(LOCAL_BACKLOG).0,
            live: watch::Sender::new(true),
        }
    }
}

#[tonic::async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, event: &Event) -> Result<(), StorageError> {
        // No receiver is not an error: nobody has anything to drop.
        let _ = self.local.send(event.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    fn live(&self) -> watch::Receiver<bool> {
        self.live.subscribe()
    }

    fn describe(&self) -> String {
        "memory (this replica only)".into()
    }
}

/// Every replica sharing a Redis (and a [`RedisNamespace`]).
pub struct RedisBus {
    invalidate_channel: String,
    update_channel: String,
    timeout: Duration,
    publisher: LazyConnection,
    local: broadcast::Sender<Event>,
    /// True while the subscriber task is subscribed.
    live: watch::Receiver<bool>,
    subscriber: JoinHandle<()>,
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl RedisBus {
    /// Starts this replica's subscriber task (on the current tokio runtime); it connects, and
    /// reconnects, by itself.
    pub fn start(
        url: &str,
        namespace: &RedisNamespace,
        timeout: Duration,
    ) -> Result<Self, StorageError> {
        let target = RedisTarget::open(url).map_err(StorageError)?;
        let nodes = subscribable(&target)?;
        let local = broadcast::channel(LOCAL_BACKLOG).0;
        let (live_tx, live) = watch::channel(false);
        let channels = [namespace.invalidate_channel(), namespace.update_channel()];
        let subscriber = tokio::spawn(follow(
            nodes,
            channels.clone(),
            timeout,
            local.clone(),
            live_tx,
        ));
        let [invalidate_channel, update_channel] = channels;
        let publisher = LazyConnection::to(target, timeout);
        Ok(Self {
            invalidate_channel,
            update_channel,
            timeout,
            publisher,
            local,
            live,
            subscriber,
        })
    }
}

#[tonic::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, event: &Event) -> Result<(), StorageError> {
        let channel = match &event.kind {
            // A flush (the `cache.flush` command) is the widest invalidation: same channel.
            Some(event::Kind::Invalidation(_) | event::Kind::Flush(_)) => &self.invalidate_channel,
            Some(event::Kind::Update(_)) => &self.update_channel,
            _ => {
                return Err(StorageError(
                    "only invalidations, flushes and updates are published".into(),
                ))
            }
        };
        let payload = event.encode_to_vec();
        tokio::time::timeout(self.timeout, async {
            let mut conn = self.publisher.get().await.map_err(StorageError)?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| StorageError(format!("redis publish: {e}")))
        })
        .await
        .map_err(|_| StorageError(format!("redis did not answer within {:?}", self.timeout)))??;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    fn live(&self) -> watch::Receiver<bool> {
        self.live.clone()
    }

    fn describe(&self) -> String {
        format!(
            "{} pub/sub ({}, {})",
            self.publisher.target().describe(),
            self.invalidate_channel,
            self.update_channel
        )
    }
}

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Where the subscriber may connect: the one Redis, or any seed node of a cluster.
fn subscribable(target: &RedisTarget) -> Result<Vec<redis::Client>, StorageError> {
    match target {
        RedisTarget::Single(client) => Ok(vec![client.clone()]),
        RedisTarget::Cluster { seeds, .. } => seeds
            .iter()
            .map(|seed| {
                redis::Client::open(seed.as_str())
                    .map_err(|e| StorageError(format!("redis seed {seed:?}: {e}")))
            })
            .collect(),
    }
}

/// The replica's one pub/sub subscriber: subscribe, rebroadcast, and flush every local stream
/// whenever the feed may have had a gap. After a failed attempt or a lost connection it tries
/// the next of `nodes` (a cluster's seeds). Runs until the bus is dropped.
async fn follow(
    nodes: Vec<redis::Client>,
    channels: [String; 2],
    timeout: Duration,
    local: broadcast::Sender<Event>,
    live: watch::Sender<bool>,
) {
    let mut retry = RETRY_MIN;
    let mut logged_down = false;
    let mut next = 0;
    loop {
        let client = &nodes[next % nodes.len()];
        next += 1;
        let subscribed = match tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await
        {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(why) => {
                if !logged_down {
                    tracing::warn!("redis pub/sub unavailable ({why}); retrying");
                    logged_down = true;
                }
                // Every node tried once: back off before the next round.
                if next % nodes.len() == 0 {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
                continue;
            }
        };
        retry = RETRY_MIN;
        logged_down = false;
        // Stay on this node until it fails.
        next -= 1;
        let node = client.get_connection_info().addr().to_string();
        tracing::info!("subscribed to redis channels {channels:?} at {node}");
        // Anything published before this moment may have been missed.
        let _ = local.send(flush(
            "subscribed to redis pub/sub: events before now may be lost",
        ));
        let _ = live.send(true);
        let why = rebroadcast(pubsub, &local).await;
        let _ = live.send(false);
        // A lost node is tried last (a failover: it is gone).
        next += 1;
        tracing::warn!(
            "redis pub/sub connection to {node} lost ({why}); flushing local subscribers and reconnecting"
        );
        let _ = local.send(flush(format!(
            "redis pub/sub connection lost ({why}): events may be lost"
        )));
    }
}

/// A silent connection (a partition, a frozen server) shows no error by itself: one PING per
/// interval must be answered in time, or the connection counts as lost.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(2);

/// Rebroadcasts messages until the connection ends or stops answering; says why.
async fn rebroadcast(pubsub: redis::aio::PubSub, local: &broadcast::Sender<Event>) -> String {
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return "connection closed".into();
                };
                match Event::decode(msg.get_payload_bytes()) {
                    Ok(event) => {
                        let _ = local.send(event);
                    }
                    // Not ours to read (a stray publisher, a newer format): whatever it
                    // meant is lost to the subscribers, so they flush.
                    Err(e) => {
                        let why = format!("undecodable event on {}: {e}", msg.get_channel_name());
                        tracing::warn!("{why}");
                        let _ = local.send(flush(why));
                    }
                }
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_DEADLINE, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("PING failed: {e}"),
                    Err(_) => return format!("no answer to PING within {HEARTBEAT_DEADLINE:?}"),
                }
            }
        }
    }
}
