//! Remote JWKS: fetched by HTTP callout, kept in shared data (one copy for every worker, with
//! the time it was fetched), refreshed on ticks. One shared attempt record per provider,
//! claimed with compare-and-swap, keeps the workers from fetching the same keys at once.

use std::rc::Rc;

use nexus_filter_core::Level;

use crate::jwks::KeySet;
use crate::{Auth, Env};

/// Where a provider's keys are fetched from.
pub(crate) struct Remote {
    pub(crate) cluster: String,
    pub(crate) authority: String,
    pub(crate) path: String,
    pub(crate) refresh_s: u64,
    pub(crate) timeout_ms: u64,
}

/// One worker's view of a provider's keys.
#[derive(Default, Clone)]
pub(crate) struct WorkerKeys {
    pub(crate) set: Option<Rc<KeySet>>,
    /// CAS token of the shared-data copy `set` was parsed from.
    pub(crate) version: Option<u32>,
    pub(crate) fetched_at_s: u64,
}

/// The shared record of a provider's last JWKS fetch: `<started_s>`, then `<started_s>:done`
/// once answered or given up.
struct Attempt {
    started_s: u64,
    done: bool,
}

impl Attempt {
    fn parse(v: &[u8]) -> Self {
        let text = std::str::from_utf8(v).unwrap_or_default();
        let (started, done) = match text.split_once(':') {
            Some((s, _)) => (s, true),
            None => (text, false),
        };
        Self {
            started_s: started.parse().unwrap_or(0),
            done,
        }
    }
}

impl Auth {
    /// Periodic work: pick up keys other workers fetched, refresh keys that are due.
    ///
    /// Returns true if a fetch was given up (never answered by its deadline, e.g. cancelled with
    /// the request that made it) or keys arrived from another worker's fetch: the adapter should
    /// then re-decide the requests waiting.
    pub fn on_tick(&self, env: &Env) -> bool {
        let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
        let expired = self.give_up_overdue(env, now_s)
            | self.give_up_session_lookups(now_s)
            | self.give_up_introspections(now_s);
        let mut synced = false;
        for (i, p) in self.providers.iter().enumerate() {
            let Some(remote) = &p.remote else { continue };
            let version = self.keys.borrow()[i].version;
            self.sync(i, env);
            synced |= self.keys.borrow()[i].version != version;
            let (has, fetched_at) = {
                let keys = self.keys.borrow();
                (keys[i].set.is_some(), keys[i].fetched_at_s)
            };
            let due = !has || now_s.saturating_sub(fetched_at) >= remote.refresh_s;
            if due {
                let retry = remote.refresh_s.min(self.refetch_min_s.max(1));
                self.try_fetch(i, env, now_s, retry);
            }
        }
        expired || synced
    }

    /// Forgets this worker's fetches past their deadline; true if there were any.
    fn give_up_overdue(&self, env: &Env, now_s: u64) -> bool {
        let mut given_up = Vec::new();
        self.pending.borrow_mut().retain(|_, (i, deadline)| {
            let keep = *deadline > now_s;
            if !keep {
                given_up.push(*i);
            }
            keep
        });
        for &i in &given_up {
            self.finish_attempt(i, env);
        }
        let expired = given_up.len();
        if expired > 0 {
            env.metrics.increment(
                "nexus_auth.jwks.refresh_failed",
                i64::try_from(expired).unwrap_or(1),
            );
            env.log.log(
                Level::Warn,
                "nexus-auth: a JWKS fetch was never answered; giving up on it",
            );
        }
        expired > 0
    }

    /// Feeds the answer of an HTTP callout (`status` None: failed or timed out). Returns false
    /// if the token is not one of this worker's JWKS fetches, session lookups or introspections.
    pub fn on_http_call_response(
        &self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        env: &Env,
    ) -> bool {
        if self.on_session_answer(token, status, body, env)
            || self.on_token_answer(token, status, body, env)
        {
            return true;
        }
        let Some((i, _)) = self.pending.borrow_mut().remove(&token) else {
            return false;
        };
        self.finish_attempt(i, env);
        let p = &self.providers[i];
        let result = match status {
            Some(200) => KeySet::parse(body),
            Some(s) => Err(format!("status {s}")),
            None => Err("no response (connection failure or timeout)".to_string()),
        };
        match result {
            Ok(set) => {
                let now_s = env.clock.now_unix_nanos() / 1_000_000_000;
                // The shared copy: `<fetched_at_s>\n<document>`, read back by `sync`.
                let mut doc = format!("{now_s}\n").into_bytes();
                doc.extend_from_slice(body);
                let key = format!("{}jwks.{}", self.prefix, p.name);
                let _ = env.shared.set(&key, &doc, None);
                let version = env.shared.get(&key).map(|(_, cas)| cas);
                self.keys.borrow_mut()[i] = WorkerKeys {
                    set: Some(Rc::new(set)),
                    version,
                    fetched_at_s: now_s,
                };
                env.metrics.increment("nexus_auth.jwks.refreshed", 1);
            }
            Err(e) => {
                env.metrics.increment("nexus_auth.jwks.refresh_failed", 1);
                let stale = if self.keys.borrow()[i].set.is_some() {
                    "serving the keys already held"
                } else {
                    "no keys held"
                };
                env.log.log(
                    Level::Warn,
                    &format!("nexus-auth: JWKS fetch for {} failed: {e}; {stale}", p.name),
                );
            }
        }
        true
    }

    /// Re-reads the shared copy of a remote provider's keys if another worker changed it.
    pub(crate) fn sync(&self, i: usize, env: &Env) {
        if self.providers[i].remote.is_none() {
            return;
        }
        let key = format!("{}jwks.{}", self.prefix, self.providers[i].name);
        let Some((bytes, cas)) = env.shared.get(&key) else {
            return;
        };
        if self.keys.borrow()[i].version == Some(cas) {
            return;
        }
        let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
            return;
        };
        let fetched_at_s = std::str::from_utf8(&bytes[..nl])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Ok(set) = KeySet::parse(&bytes[nl + 1..]) {
            self.keys.borrow_mut()[i] = WorkerKeys {
                set: Some(Rc::new(set)),
                version: Some(cas),
                fetched_at_s,
            };
        }
    }

    pub(crate) fn in_flight(&self, i: usize) -> bool {
        self.pending.borrow().values().any(|(p, _)| *p == i)
    }

    fn attempt_key(&self, i: usize) -> String {
        format!("{}jwks-attempt.{}", self.prefix, self.providers[i].name)
    }

    /// Whether another worker has a fetch for provider `i` on the wire (started, not answered,
    /// not past its timeout). A request that needs those keys waits for them rather than
    /// failing: they reach this worker through shared data on its next tick.
    pub(crate) fn fetching_elsewhere(&self, i: usize, env: &Env, now_s: u64) -> bool {
        let Some(remote) = &self.providers[i].remote else {
            return false;
        };
        let Some((v, _)) = env.shared.get(&self.attempt_key(i)) else {
            return false;
        };
        let a = Attempt::parse(&v);
        !a.done && now_s <= a.started_s + remote.timeout_ms.div_ceil(1000) + 1
    }

    /// Marks the shared attempt record answered (or given up), so no worker waits on it.
    fn finish_attempt(&self, i: usize, env: &Env) {
        let key = self.attempt_key(i);
        if let Some((v, cas)) = env.shared.get(&key) {
            let a = Attempt::parse(&v);
            if !a.done {
                // Best effort: a lost race means another worker restarted the record.
                let _ = env
                    .shared
                    .set(&key, format!("{}:done", a.started_s).as_bytes(), Some(cas));
            }
        }
    }

    /// Starts a fetch unless one is in flight here or one started anywhere within
    /// `min_interval_s` (one record in shared data, claimed with compare-and-swap).
    pub(crate) fn try_fetch(&self, i: usize, env: &Env, now_s: u64, min_interval_s: u64) -> bool {
        if self.providers[i].remote.is_none() || self.in_flight(i) {
            return false;
        }
        let key = self.attempt_key(i);
        let cas = match env.shared.get(&key) {
            Some((v, cas)) => {
                let last = Attempt::parse(&v).started_s;
                if now_s < last.saturating_add(min_interval_s) {
                    return false;
                }
                Some(cas)
            }
            None => None,
        };
        if env
            .shared
            .set(&key, now_s.to_string().as_bytes(), cas)
            .is_err()
        {
            return false;
        }
        self.dispatch(i, env, now_s)
    }

    /// Sends the fetch of provider `i`'s keys (its attempt record already claimed).
    fn dispatch(&self, i: usize, env: &Env, now_s: u64) -> bool {
        let p = &self.providers[i];
        let Some(remote) = &p.remote else {
            return false;
        };
        let target = (remote.cluster.as_str(), remote.authority.as_str());
        match get_json(env, target, &remote.path, None, remote.timeout_ms) {
            Ok(token) => {
                let deadline = now_s + remote.timeout_ms.div_ceil(1000) + 2;
                self.pending.borrow_mut().insert(token, (i, deadline));
                env.metrics.increment("nexus_auth.jwks.fetches", 1);
                true
            }
            Err(_) => {
                self.finish_attempt(i, env);
                env.metrics.increment("nexus_auth.jwks.refresh_failed", 1);
                env.log.log(
                    Level::Warn,
                    &format!(
                        "nexus-auth: cannot dispatch the JWKS fetch for {} to cluster {}",
                        p.name, remote.cluster
                    ),
                );
                false
            }
        }
    }
}

/// A `GET` callout for JSON to `(cluster, authority)`, with one extra header if given.
pub(crate) fn get_json(
    env: &Env,
    (cluster, authority): (&str, &str),
    path: &str,
    extra: Option<(&str, &str)>,
    timeout_ms: u64,
) -> Result<u32, nexus_filter_core::host::CalloutError> {
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
        ("accept", "application/json"),
        ("user-agent", "nexus-auth"),
    ];
    headers.extend(extra);
    env.callouts
        .dispatch_http_call(cluster, &headers, b"", timeout_ms)
}
