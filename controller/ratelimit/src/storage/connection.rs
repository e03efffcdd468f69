//! Where a Nexus service's Redis is, and one connection to it: a single Redis (`redis://`) or a
//! Redis Cluster (`redis+cluster://host1:port1,host2:port2`), chosen by the URL alone, so every
//! place that takes a Redis URL (`REDIS_URL`, `--redis-url`, the chart's Secret) takes a
//! cluster too.
//!
//! The cluster form is envoyproxy/ratelimit's `REDIS_TYPE=cluster` with its comma-separated
//! `REDIS_URL` of seed nodes, folded into one URL: any reachable seed is enough, the client
//! learns the rest of the cluster (and every later failover) from it. Credentials before an
//! `@` apply to every seed. A cluster has only database 0.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

/// The URL scheme of a Redis Cluster.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A Redis deployment, parsed from its URL.
#[derive(Clone)]
pub enum RedisTarget {
    Single(redis::Client),
    /// `redis://` URLs of the seed nodes.
    Cluster {
        seeds: Vec<String>,
    },
}

impl RedisTarget {
    /// `redis://host:port/db` (anything `redis::Client::open` takes) or
    /// `redis+cluster://[user:password@]host:port,host:port[/0]`.
    pub fn open(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            let client = redis::Client::open(url).map_err(|e| format!("redis url {url:?}: {e}"))?;
            return Ok(Self::Single(client));
        };
        let seeds = cluster_seeds(rest).map_err(|e| format!("redis url {url:?}: {e}"))?;
        // Checks every seed's URL now, not at the first connection.
        ClusterClient::new(seeds.clone()).map_err(|e| format!("redis url {url:?}: {e}"))?;
        Ok(Self::Cluster { seeds })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// `redis://host:port` of every seed (one for a single Redis): where a subscriber can
    /// connect, since a cluster delivers a `PUBLISH` to every node.
    pub fn seed_urls(&self) -> Vec<String> {
        match self {
            Self::Single(client) => vec![client.get_connection_info().addr().to_string()],
            Self::Cluster { seeds, .. } => seeds.clone(),
        }
    }

    /// For logs: `redis at 127.0.0.1:6379`, `redis cluster at 127.0.0.1:7000,...` (no
    /// credentials).
    pub fn describe(&self) -> String {
        match self {
            Self::Single(client) => format!("redis at {}", client.get_connection_info().addr()),
            Self::Cluster { seeds, .. } => {
                let hosts: Vec<&str> = seeds.iter().map(|s| host_port(s)).collect();
                format!("redis cluster at {}", hosts.join(","))
            }
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<RedisConnection, String> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(RedisConnection::Single)
                    .map_err(|e| format!("redis connect: {e}"))
            }
            Self::Cluster { seeds, .. } => cluster_builder(seeds, timeout)
                .build()
                .map_err(|e| format!("redis cluster: {e}"))?
                .get_async_connection()
                .await
                .map(RedisConnection::Cluster)
                .map_err(|e| format!("redis cluster connect: {e}")),
        }
    }
}

/// Every request (its retries and the redirections of a failover included) ends within
/// `timeout`, as on a single Redis.
fn cluster_builder(seeds: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .overall_response_timeout(Some(timeout))
        .min_retry_wait(10)
        .max_retry_wait(timeout.as_millis().try_into().unwrap_or(u64::MAX))
}

/// `user:password@h1:p1,h2:p2/0` → `redis://user:password@h1:p1`, `redis://user:password@h2:p2`.
fn cluster_seeds(rest: &str) -> Result<Vec<String>, String> {
    let (hosts, db) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(db, "" | "0") {
        return Err(format!("a cluster has only database 0, not {db:?}"));
    }
    let (auth, hosts) = match hosts.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), hosts),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{auth}{h}"))
        .collect();
    if seeds.is_empty() {
        return Err("no seed node (redis+cluster://host:port,host:port)".into());
    }
    Ok(seeds)
}

fn host_port(seed: &str) -> &str {
    seed.rsplit('@')
        .next()
        .unwrap_or(seed)
        .trim_start_matches("redis://")
}

/// A connection to either kind of deployment; commands, pipelines and scripts run on both
/// (on a cluster, a pipeline's keys must share one slot).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One node of a cluster (host and port, as the cluster names it).
pub type Node = (String, u16);

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Where a walk of the whole keyspace (`SCAN`) must go: the one Redis (`None`), or every
    /// primary serving slots, since each cluster node scans only its own keys.
    pub async fn scan_nodes(&mut self) -> RedisResult<Vec<Option<Node>>> {
        let Self::Cluster(c) = self else {
            return Ok(vec![None]);
        };
        let nodes = c
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let nodes: String = redis::from_redis_value(nodes)?;
        Ok(nodes
            .lines()
            .filter_map(serving_primary)
            .map(Some)
            .collect())
    }

    /// `cmd` on the primary serving `key`'s slot (a command whose keys are not arguments,
    /// like `SCAN` for keys under one hash tag), or on the single Redis.
    pub async fn query_at_key<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> RedisResult<T> {
        match self {
            Self::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                Ok(redis::from_redis_value(
                    c.route_command(cmd.clone(), to).await?,
                )?)
            }
            conn => cmd.query_async(conn).await,
        }
    }

    /// `cmd` on `node` (a cluster's), or routed as usual (`None`).
    pub async fn query_on<T: FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        node: &Option<Node>,
    ) -> RedisResult<T> {
        match (self, node) {
            (Self::Cluster(c), Some((host, port))) => {
                let to = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                let value = c
                    .route_command(cmd.clone(), RoutingInfo::SingleNode(to))
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }
}

/// The address of a `CLUSTER NODES` line's node when it is a primary serving slots and not
/// marked failed.
fn serving_primary(line: &str) -> Option<Node> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags = fields.get(2)?;
    let primary = flags.split(',').any(|f| f == "master") && !flags.contains("fail");
    if !primary || fields.len() <= 8 {
        return None;
    }
    let addr = fields.get(1)?.split(['@', ',']).next()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis connection made on first use (so a service starts while Redis is down) and then
/// shared; both kinds reconnect by themselves (a cluster connection also follows failovers).
/// Every Nexus service that keeps state in Redis connects through this.
pub struct LazyConnection {
    /// Boxed: a `redis::Client` is large, and services keep this beside small state.
    target: Box<RedisTarget>,
    timeout: Duration,
    slot: Mutex<Option<RedisConnection>>,
}

impl LazyConnection {
    pub fn new(client: redis::Client, timeout: Duration) -> Self {
        Self::to(RedisTarget::Single(client), timeout)
    }

    /// To a single Redis or a cluster.
    pub fn to(target: RedisTarget, timeout: Duration) -> Self {
        LazyConnection {
            target: Box::new(target),
            timeout,
            slot: Mutex::new(None),
        }
    }

    /// [`RedisTarget::open`], then [`LazyConnection::to`].
    pub fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self::to(RedisTarget::open(url)?, timeout))
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The shared connection, connecting within the timeout if there is none yet.
    pub async fn get(&self) -> Result<RedisConnection, String> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(self.timeout, self.target.connect(self.timeout))
            .await
            .map_err(|_| "redis connect timed out".to_string())??;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_seeds() {
        let t = RedisTarget::open("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(t.is_cluster());
        assert_eq!(
            t.seed_urls(),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        assert_eq!(
            t.describe(),
            "redis cluster at 127.0.0.1:7000,127.0.0.1:7001"
        );
        let auth = cluster_seeds("u:p@a:1,b:2/0").unwrap();
        assert_eq!(auth, ["redis://u:p@a:1", "redis://u:p@b:2"]);
        assert_eq!(
            RedisTarget::open("redis+cluster://u:secret@a:1").map(|t| t.describe()),
            Ok("redis cluster at a:1".to_string())
        );
    }

    #[test]
    fn scans_visit_primaries_that_serve_slots() {
        let line = |l: &str| serving_primary(l);
        assert_eq!(
            line("07c3 127.0.0.1:30004@40004 myself,master - 0 1 4 connected 0-5460"),
            Some(("127.0.0.1".into(), 30004))
        );
        assert_eq!(
            line("07c3 127.0.0.1:30004@40004 master,fail - 0 1 4 connected 1"),
            None
        );
        assert_eq!(
            line("e7d1 127.0.0.1:30005@40005 slave 07c3 0 1 4 connected"),
            None
        );
        assert_eq!(
            line("e7d1 127.0.0.1:30005@40005 master - 0 1 4 connected"),
            None
        );
    }

    #[test]
    fn a_cluster_url_without_seeds_or_with_a_database_is_refused() {
        let err = |url: &str| RedisTarget::open(url).err().unwrap_or_default();
        assert!(err("redis+cluster://").contains("no seed node"));
        assert!(err("redis+cluster://a:1/3").contains("only database 0"));
        assert!(!RedisTarget::open("redis://127.0.0.1:6379/0")
            .unwrap()
            .is_cluster());
    }
}
