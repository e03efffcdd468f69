//! In-memory hosts for native unit tests of filter logic.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::host::{
    CalloutError, Callouts, Clock, HeaderMap, Level, Log, Metrics, SharedData, SharedDataError,
};

/// Headers in a vector, as the host keeps them (order and duplicates preserved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemHeaders(pub Vec<(String, String)>);

impl MemHeaders {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string()))
                .collect(),
        )
    }
}

impl HeaderMap for MemHeaders {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn pairs(&self) -> crate::HeaderList {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
    fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.0.push((name.to_string(), value.to_string()));
    }
    fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }
}

#[derive(Debug, Default)]
pub struct FixedClock(pub Cell<u64>);

impl Clock for FixedClock {
    fn now_unix_nanos(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Debug, Default)]
pub struct MemMetrics(pub RefCell<BTreeMap<String, i64>>);

impl MemMetrics {
    pub fn value(&self, name: &str) -> i64 {
        self.0.borrow().get(name).copied().unwrap_or(0)
    }
}

impl Metrics for MemMetrics {
    fn increment(&self, name: &str, delta: i64) {
        *self.0.borrow_mut().entry(name.to_string()).or_default() += delta;
    }
    /// Kept as `<name>.count` and `<name>.sum`.
    fn record(&self, name: &str, value: u64) {
        let mut m = self.0.borrow_mut();
        *m.entry(format!("{name}.count")).or_default() += 1;
        *m.entry(format!("{name}.sum")).or_default() += i64::try_from(value).unwrap_or(i64::MAX);
    }
}

#[derive(Debug, Default)]
pub struct MemLog(pub RefCell<Vec<(Level, String)>>);

impl Log for MemLog {
    fn log(&self, level: Level, message: &str) {
        self.0.borrow_mut().push((level, message.to_string()));
    }
}

/// Shared data with real CAS semantics: every write bumps the key's token.
#[derive(Debug, Default)]
pub struct MemSharedData(pub RefCell<BTreeMap<String, (Vec<u8>, u32)>>);

impl SharedData for MemSharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.borrow().get(key).cloned()
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        let mut map = self.0.borrow_mut();
        let current = map.get(key).map(|(_, token)| *token).unwrap_or(0);
        if let Some(expected) = cas {
            if expected != 0 && expected != current {
                return Err(SharedDataError::CasMismatch);
            }
        }
        map.insert(key.to_string(), (value.to_vec(), current.wrapping_add(1)));
        Ok(())
    }
}

/// One HTTP callout a filter made, as [`MemCallouts`] recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCallout {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// Records callouts and hands out increasing tokens; `refuse` makes every call fail.
#[derive(Debug, Default)]
pub struct MemCallouts {
    pub calls: RefCell<Vec<RecordedCallout>>,
    pub refuse: Cell<bool>,
}

impl Callouts for MemCallouts {
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        if self.refuse.get() {
            return Err(CalloutError::Refused);
        }
        let mut calls = self.calls.borrow_mut();
        let token = u32::try_from(calls.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        calls.push(RecordedCallout {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            body: body.to_vec(),
            timeout_ms,
        });
        Ok(token)
    }
}
