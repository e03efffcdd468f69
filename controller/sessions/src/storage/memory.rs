//! Sessions in this process (one replica; lost on restart).

use std::collections::HashMap;
use std::sync::Mutex;

use nexus_config::session::SessionIdentity;

use super::{Clock, SessionStorage, StorageError};

pub struct MemoryStorage {
    sessions: Mutex<HashMap<String, SessionIdentity>>,
    /// State hash → (value, expires at unix seconds).
    pending: Mutex<HashMap<String, (String, u64)>>,
    clock: Clock,
}

impl MemoryStorage {
    /// `clock`: unix milliseconds (tests move it).
    pub fn new(clock: Clock) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn now_s(&self) -> u64 {
        (self.clock)() / 1000
    }

    fn locked(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, SessionIdentity>>, StorageError> {
        self.sessions
            .lock()
            .map_err(|_| StorageError("session table poisoned".into()))
    }
}

#[tonic::async_trait]
impl SessionStorage for MemoryStorage {
    async fn put(&self, id_hash: &str, session: &SessionIdentity) -> Result<(), StorageError> {
        let now = self.now_s();
        let mut m = self.locked()?;
        // Expired sessions go when new ones come: the table never holds more than the live
        // sessions of one TTL.
        m.retain(|_, s| s.expires_at_s > now);
        m.insert(id_hash.to_string(), session.clone());
        Ok(())
    }

    async fn get(&self, id_hash: &str) -> Result<Option<SessionIdentity>, StorageError> {
        let now = self.now_s();
        Ok(self
            .locked()?
            .get(id_hash)
            .filter(|s| s.expires_at_s > now)
            .cloned())
    }

    async fn delete(&self, id_hash: &str) -> Result<bool, StorageError> {
        let now = self.now_s();
        Ok(self
            .locked()?
            .remove(id_hash)
            .is_some_and(|s| s.expires_at_s > now))
    }

    async fn put_pending(&self, key: &str, value: &str, ttl_s: u64) -> Result<(), StorageError> {
        let now = self.now_s();
        let mut m = self
            .pending
            .lock()
            .map_err(|_| StorageError("pending table poisoned".into()))?;
        m.retain(|_, (_, exp)| *exp > now);
        m.insert(key.to_string(), (value.to_string(), now + ttl_s.max(1)));
        Ok(())
    }

    async fn take_pending(&self, key: &str) -> Result<Option<String>, StorageError> {
        let now = self.now_s();
        let mut m = self
            .pending
            .lock()
            .map_err(|_| StorageError("pending table poisoned".into()))?;
        Ok(m.remove(key).filter(|(_, exp)| *exp > now).map(|(v, _)| v))
    }

    fn describe(&self) -> String {
        "memory (this replica only)".into()
    }
}
