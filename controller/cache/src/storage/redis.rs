//! Entries in Redis, shared by every replica of the service.
//!
//! Layout (after a configurable key prefix, `nexus:cache:` by default), in the manner of
//! Kuadrant limitador's namespaced keys:
//!
//! - `<prefix>e:<key>`: a hash `{v: value, ts: timestamp_ms, w: writer, tags: JSON array}` with
//!   the entry's TTL (`PEXPIRE`), so Redis drops expired entries by itself.
//! - `<prefix>t:<tag>`: a set of the keys carrying `tag`, expiring with its longest-lived entry;
//!   a key leaves it when its entry is invalidated or re-put with other tags.
//! - `<prefix>w:k:<key>`, `<prefix>w:p:<key prefix>`, `<prefix>w:t:<tag>`: invalidation
//!   watermarks (decimal unix ms), each with the watermark TTL (`PEXPIRE`); only ever raised.
//! - `<prefix>w:plen`: the set of the lengths (bytes) of the prefixes invalidated within the
//!   watermark TTL (the set expires with its newest member). A put looks up the prefix
//!   watermarks of its key only at those lengths: one `MGET` of a handful of keys, rather than
//!   one per byte of the key (keys are a path, a query and a hex digest). Lengths whose watermarks
//!   have expired cost a lookup that finds nothing until the set itself expires; there are
//!   never more of them than the longest invalidated prefix is long.
//!
//! Puts and removals run as Lua scripts, so last-write-wins, the watermark check and the tag
//! index stay consistent under concurrent writers. An invalidation first records its
//! watermarks (one script), then removes. Prefix invalidation `SCAN`s the entry namespace.
//! Every operation has a deadline: while Redis is down the service answers UNAVAILABLE
//! quickly; the connection manager reconnects by itself when Redis returns.
//!
//! **Redis Cluster** (`redis+cluster://`): the key prefix is written as a hash tag
//! (`{nexus:cache:}e:<key>`), so every key of one namespace is in one slot. The scripts touch
//! keys they compute from their arguments (a put checks the watermarks of every prefix of its
//! key and of its tags, and updates tag sets holding keys of any name), so they need the whole
//! namespace on one node: on a cluster the cache gets failover, not sharding (several
//! namespaces spread over several slots). Each script names a key of the namespace as `KEYS[1]`
//! so the cluster client sends it to that slot's primary, and a prefix `SCAN` goes there too.
//! On a cluster an invalidation ends with `WAIT 1`: it is acknowledged once a replica has it
//! (or after the wait, when the primary has no replica left), so a failover right after it
//! does not bring the invalidated entries back.

use std::time::Duration;

use nexus_proto::cache::{Entry, Invalidation, PutRequest, PutResponse};
use nexus_ratelimit_service::storage::{LuaScript, RedisConnection, RedisTarget};

use super::{LazyConnection, Storage, StorageError, Watermark};

/// Byte-wise comparison (Lua's `<` on strings follows the server's locale) and the
/// last-write-wins rule of [`super::newer`], over decimal timestamps of any length.
const LWW_LUA: &str = r"
local function cmp(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  if #a == #b then return 0 end
  return #a < #b and -1 or 1
end
local function newer(ats, aw, bts, bw)
  if #ats ~= #bts then return #ats > #bts end
  local c = cmp(ats, bts)
  if c ~= 0 then return c > 0 end
  return cmp(aw, bw) > 0
end
local function le(a, b)
  if #a ~= #b then return #a < #b end
  return cmp(a, b) <= 0
end
";

/// KEYS[1] entry. ARGV: ts, writer, ttl_ms, value, tags (JSON), tag prefix, key, watermark
/// prefix, tag... Refused (answering the stored version, or 0 and '' when none) when not newer
/// than the stored version, or at or before a watermark of the key, a prefix of it or a tag.
const PUT_LUA: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'ts', 'w', 'tags')
local function refused()
  if cur[1] then return {0, cur[1], cur[2]} end
  return {0, '0', ''}
end
if cur[1] and not newer(ARGV[1], ARGV[2], cur[1], cur[2]) then
  return refused()
end
local key, wp = ARGV[7], ARGV[8]
local marks = {wp .. 'k:' .. key}
for _, n in ipairs(redis.call('SMEMBERS', wp .. 'plen')) do
  local len = tonumber(n)
  if len and len >= 1 and len <= #key then
    marks[#marks + 1] = wp .. 'p:' .. string.sub(key, 1, len)
  end
end
for i = 9, #ARGV do
  marks[#marks + 1] = wp .. 't:' .. ARGV[i]
end
for i = 1, #marks, 256 do
  local batch = {}
  for j = i, math.min(i + 255, #marks) do batch[#batch + 1] = marks[j] end
  for _, at in ipairs(redis.call('MGET', unpack(batch))) do
    if at and le(ARGV[1], at) then return refused() end
  end
end
if cur[1] then
  for _, tag in ipairs(cjson.decode(cur[3])) do
    redis.call('SREM', ARGV[6] .. tag, ARGV[7])
  end
  redis.call('DEL', KEYS[1])
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'ts', ARGV[1], 'w', ARGV[2], 'tags', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
for i = 9, #ARGV do
  local tk = ARGV[6] .. ARGV[i]
  redis.call('SADD', tk, ARGV[7])
  if redis.call('PTTL', tk) < ttl then redis.call('PEXPIRE', tk, ttl) end
end
return {1, ARGV[1], ARGV[2]}
";

/// ARGV: watermark prefix, at_ms, ttl_ms, then pairs of kind ('k' key, 'p' prefix, 't' tag)
/// and name. Raises (never lowers) each watermark and extends its TTL to at least ttl_ms.
const MARK_LUA: &str = r"
local wp, at, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function keep(k, pttl)
  if pttl < ttl then pttl = ttl end
  redis.call('PEXPIRE', k, pttl)
end
for i = 4, #ARGV - 1, 2 do
  local kind, name = ARGV[i], ARGV[i + 1]
  local k = wp .. kind .. ':' .. name
  local cur = redis.call('GET', k)
  local pttl = redis.call('PTTL', k)
  if not cur or not le(at, cur) then redis.call('SET', k, at) end
  keep(k, pttl)
  if kind == 'p' then
    local lk = wp .. 'plen'
    redis.call('SADD', lk, tostring(#name))
    keep(lk, redis.call('PTTL', lk))
  end
end
return 0
";

/// ARGV: entry prefix, tag prefix, 'keys' | 'tags', name... Answers the entries removed.
const INVALIDATE_LUA: &str = r"
local removed = 0
local function drop(key)
  local ek = ARGV[1] .. key
  local tags = redis.call('HGET', ek, 'tags')
  if not tags then return end
  for _, tag in ipairs(cjson.decode(tags)) do
    redis.call('SREM', ARGV[2] .. tag, key)
  end
  removed = removed + redis.call('DEL', ek)
end
for i = 4, #ARGV do
  if ARGV[3] == 'tags' then
    local tk = ARGV[2] .. ARGV[i]
    for _, key in ipairs(redis.call('SMEMBERS', tk)) do drop(key) end
    redis.call('DEL', tk)
  else
    drop(ARGV[i])
  end
end
return removed
";

/// Keys removed per script call when invalidating a prefix.
const SCAN_BATCH: usize = 500;

/// Where this service's keys and channels are, so deployments (and tests) can share a Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNamespace {
    /// Before every key: entries are `<key_prefix>e:<key>`, tag sets `<key_prefix>t:<tag>`,
    /// watermarks `<key_prefix>w:...`.
    pub key_prefix: String,
    /// Before the channel names `cache.invalidate` and `cache.update`.
    pub channel_prefix: String,
}

impl Default for RedisNamespace {
    fn default() -> Self {
        Self {
            key_prefix: "nexus:cache:".into(),
            channel_prefix: String::new(),
        }
    }
}

impl RedisNamespace {
    /// Keys and channels all under `prefix` (tests: nothing leaks between them).
    pub fn isolated(prefix: &str) -> Self {
        Self {
            key_prefix: prefix.into(),
            channel_prefix: prefix.into(),
        }
    }

    /// `{<key_prefix>}`: the Redis Cluster hash tag every key of the namespace starts with.
    pub fn hash_tag(&self) -> String {
        format!("{{{}}}", self.key_prefix)
    }

    pub fn entry_prefix(&self) -> String {
        format!("{}e:", self.hash_tag())
    }

    pub fn tag_prefix(&self) -> String {
        format!("{}t:", self.hash_tag())
    }

    pub fn watermark_prefix(&self) -> String {
        format!("{}w:", self.hash_tag())
    }

    pub fn invalidate_channel(&self) -> String {
        format!("{}cache.invalidate", self.channel_prefix)
    }

    pub fn update_channel(&self) -> String {
        format!("{}cache.update", self.channel_prefix)
    }
}

pub struct RedisStorage {
    entry_prefix: String,
    tag_prefix: String,
    watermark_prefix: String,
    timeout: Duration,
    conn: LazyConnection,
    put: LuaScript,
    mark: LuaScript,
    invalidate: LuaScript,
}

impl RedisStorage {
    /// `url` like `redis://127.0.0.1:6379/0`, or a cluster's `redis+cluster://h1:p1,h2:p2`;
    /// `timeout` bounds every operation.
    pub fn new(
        url: &str,
        namespace: &RedisNamespace,
        timeout: Duration,
    ) -> Result<Self, StorageError> {
        let target = RedisTarget::open(url).map_err(StorageError)?;
        let conn = LazyConnection::to(target, timeout);
        Ok(Self {
            entry_prefix: namespace.entry_prefix(),
            tag_prefix: namespace.tag_prefix(),
            watermark_prefix: namespace.watermark_prefix(),
            timeout,
            conn,
            put: LuaScript::new(&format!("{LWW_LUA}{PUT_LUA}")),
            mark: LuaScript::new(&format!("{LWW_LUA}{MARK_LUA}")),
            invalidate: LuaScript::new(INVALIDATE_LUA),
        })
    }

    /// A key of the namespace (its slot is every key's slot): the scripts that compute their
    /// keys name it as `KEYS[1]`, so a cluster client sends them to that slot's primary.
    fn anchor(&self) -> String {
        format!("{}plen", self.watermark_prefix)
    }

    async fn connection(&self) -> Result<RedisConnection, StorageError> {
        self.conn.get().await.map_err(StorageError)
    }

    /// Runs `op` within the deadline.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .map_err(|_| StorageError(format!("redis did not answer within {:?}", self.timeout)))?
    }

    async fn drop_keys(
        &self,
        conn: &mut RedisConnection,
        mode: &str,
        names: &[String],
    ) -> Result<u64, StorageError> {
        if names.is_empty() {
            return Ok(0);
        }
        let mut call = self.invalidate.prepare_invoke();
        call.key(self.anchor())
            .arg(&self.entry_prefix)
            .arg(&self.tag_prefix)
            .arg(mode);
        for name in names {
            call.arg(name);
        }
        call.invoke_async(conn).await.map_err(redis_error)
    }

    async fn mark(
        &self,
        conn: &mut RedisConnection,
        selection: &Invalidation,
        watermark: Watermark,
    ) -> Result<(), StorageError> {
        let mut call = self.mark.prepare_invoke();
        call.key(self.anchor())
            .arg(&self.watermark_prefix)
            .arg(watermark.at_ms.to_string())
            .arg(watermark.ttl_ms.max(1));
        for (kind, names) in [
            ("k", &selection.keys),
            ("p", &selection.prefixes),
            ("t", &selection.tags),
        ] {
            for name in names {
                call.arg(kind).arg(name);
            }
        }
        let _: i64 = call.invoke_async(conn).await.map_err(redis_error)?;
        Ok(())
    }

    async fn scan_prefix(
        &self,
        conn: &mut RedisConnection,
        prefix: &str,
    ) -> Result<u64, StorageError> {
        let pattern = format!(
            "{}{}*",
            glob_escape(&self.entry_prefix),
            glob_escape(prefix)
        );
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .to_owned();
            let anchor = self.anchor();
            let (next, found): (u64, Vec<String>) = self
                .bounded(async {
                    let scanned = conn.query_at_key(&scan, &anchor).await;
                    scanned.map_err(redis_error)
                })
                .await?;
            let keys: Vec<String> = found
                .iter()
                .filter_map(|k| k.strip_prefix(&self.entry_prefix))
                .map(str::to_string)
                .collect();
            removed += self.bounded(self.drop_keys(conn, "keys", &keys)).await?;
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

impl RedisStorage {
    /// Waits (at most half the deadline) until a replica of the namespace's primary has
    /// every write this connection made there: the watermarks and removals above. A primary
    /// without a replica (its replica is being replaced) answers 0 after the wait; the
    /// invalidation stands, as on a single Redis.
    async fn replicated(&self, conn: &mut RedisConnection) -> Result<(), StorageError> {
        let wait_ms = u64::try_from((self.timeout / 2).as_millis()).unwrap_or(u64::MAX);
        let wait = redis::cmd("WAIT").arg(1).arg(wait_ms.max(1)).to_owned();
        let acked: i64 = conn
            .query_at_key(&wait, &self.anchor())
            .await
            .map_err(redis_error)?;
        if acked < 1 {
            tracing::warn!("invalidation not yet on a replica after {wait_ms} ms");
        }
        Ok(())
    }
}

/// Escapes Redis glob metacharacters, so a key prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn redis_error(e: redis::RedisError) -> StorageError {
    StorageError(format!("redis: {e}"))
}

#[tonic::async_trait]
impl Storage for RedisStorage {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            let ek = format!("{}{key}", self.entry_prefix);
            type Fields = (Option<Vec<u8>>, Option<u64>, Option<String>, Option<String>);
            let (fields, pttl): (Fields, i64) = redis::pipe()
                .atomic()
                .cmd("HMGET")
                .arg(&ek)
                .arg("v")
                .arg("ts")
                .arg("w")
                .arg("tags")
                .pttl(&ek)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            let (Some(value), Some(timestamp_ms), Some(writer), Some(tags)) = fields else {
                return Ok(None);
            };
            if pttl <= 0 {
                return Ok(None);
            }
            let tags: Vec<String> = serde_json::from_str(&tags)
                .map_err(|e| StorageError(format!("entry {key:?} has unreadable tags: {e}")))?;
            Ok(Some(Entry {
                value,
                tags,
                timestamp_ms,
                writer,
                ttl_remaining_ms: u64::try_from(pttl).unwrap_or(0),
            }))
        })
        .await
    }

    async fn put(&self, put: &PutRequest) -> Result<PutResponse, StorageError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            let tags =
                serde_json::to_string(&put.tags).map_err(|e| StorageError(format!("tags: {e}")))?;
            let mut call = self.put.prepare_invoke();
            call.key(format!("{}{}", self.entry_prefix, put.key))
                .arg(put.timestamp_ms.to_string())
                .arg(&put.writer)
                .arg(put.ttl_ms)
                .arg(put.value.as_slice())
                .arg(tags)
                .arg(&self.tag_prefix)
                .arg(&put.key)
                .arg(&self.watermark_prefix);
            for tag in &put.tags {
                call.arg(tag);
            }
            let (stored, timestamp_ms, writer): (u8, u64, String) =
                call.invoke_async(&mut conn).await.map_err(redis_error)?;
            Ok(PutResponse {
                stored: stored == 1,
                timestamp_ms,
                writer,
            })
        })
        .await
    }

    async fn invalidate(
        &self,
        selection: &Invalidation,
        watermark: Watermark,
    ) -> Result<u64, StorageError> {
        // A prefix may cover many keys: each SCAN round trip has its own deadline.
        let mut conn = self.bounded(self.connection()).await?;
        // Watermarks first: from here on a stale put is refused; one that landed before is
        // still there for the removals below (SCAN returns every key present throughout).
        self.bounded(self.mark(&mut conn, selection, watermark))
            .await?;
        let mut removed = self
            .bounded(self.drop_keys(&mut conn, "keys", &selection.keys))
            .await?;
        removed += self
            .bounded(self.drop_keys(&mut conn, "tags", &selection.tags))
            .await?;
        for prefix in &selection.prefixes {
            removed += self.scan_prefix(&mut conn, prefix).await?;
        }
        if conn.is_cluster() {
            self.bounded(self.replicated(&mut conn)).await?;
        }
        Ok(removed)
    }

    async fn tag_index(&self, tag: &str) -> Result<Vec<String>, StorageError> {
        self.bounded(async {
            let mut conn = self.connection().await?;
            let mut keys: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("{}{tag}", self.tag_prefix))
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            keys.sort();
            Ok(keys)
        })
        .await
    }

    fn describe(&self) -> String {
        self.conn.target().describe()
    }
}
