//! Sessions in Redis, shared by every replica and surviving restarts of every Nexus process:
//! `<prefix><sha256 of the id>` holds the session's JSON, with `EXPIREAT` its `expires_at_s`;
//! `<prefix>pending:<sha256 of a state>` a sign-in in progress (`GETDEL`: used once).
//! Every operation has a deadline, so a Redis outage is a quick error (503 upstream of it).

use std::time::Duration;

use nexus_cache_service::storage::LazyConnection;
use nexus_config::session::SessionIdentity;

use super::{SessionStorage, StorageError};

/// The key prefix of sessions unless configured.
pub const DEFAULT_PREFIX: &str = "nexus:session:";

pub struct RedisStorage {
    prefix: String,
    timeout: Duration,
    conn: LazyConnection,
}

impl RedisStorage {
    /// `url` like `redis://127.0.0.1:6379/0`; `timeout` bounds every operation.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StorageError> {
        Ok(Self {
            conn: LazyConnection::open(url, timeout).map_err(StorageError)?,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StorageError> {
        let op = async {
            let mut conn = self.conn.get().await.map_err(StorageError)?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| StorageError(format!("redis: {e}")))
        };
        tokio::time::timeout(self.timeout, op)
            .await
            .map_err(|_| StorageError(format!("redis did not answer within {:?}", self.timeout)))?
    }
}

#[tonic::async_trait]
impl SessionStorage for RedisStorage {
    async fn put(&self, id_hash: &str, session: &SessionIdentity) -> Result<(), StorageError> {
        let json = serde_json::to_string(session)
            .map_err(|e| StorageError(format!("session as JSON: {e}")))?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{id_hash}", self.prefix))
            .arg(json)
            .arg("EXAT")
            .arg(session.expires_at_s);
        self.run::<()>(cmd).await
    }

    async fn get(&self, id_hash: &str) -> Result<Option<SessionIdentity>, StorageError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}{id_hash}", self.prefix));
        let Some(json) = self.run::<Option<String>>(cmd).await? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| StorageError(format!("unreadable session in redis: {e}")))
    }

    async fn delete(&self, id_hash: &str) -> Result<bool, StorageError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}{id_hash}", self.prefix));
        Ok(self.run::<i64>(cmd).await? > 0)
    }

    async fn put_pending(&self, key: &str, value: &str, ttl_s: u64) -> Result<(), StorageError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}pending:{key}", self.prefix))
            .arg(value)
            .arg("EX")
            .arg(ttl_s.max(1));
        self.run::<()>(cmd).await
    }

    async fn take_pending(&self, key: &str) -> Result<Option<String>, StorageError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(format!("{}pending:{key}", self.prefix));
        self.run::<Option<String>>(cmd).await
    }

    fn describe(&self) -> String {
        format!("{} ({}*)", self.conn.target().describe(), self.prefix)
    }
}
