//! A copy of every appended entry in a Redis stream (`XADD`, one field `entry` holding the
//! chained line), for consumers that follow the audit log live. The file stays the record:
//! entries go to Redis after they are on disk, in order, by one task; a copy Redis does not
//! take is logged and counted (`failures`), never retried into the chain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nexus_ratelimit_service::storage::LazyConnection;
use tokio::sync::mpsc;

/// The stream `nexus up` and the service write to.
pub const STREAM: &str = "nexus:audit";
/// The stream keeps about this many entries (`MAXLEN ~`); the file keeps them all.
const MAX_LEN: u64 = 1_000_000;
/// Batches waiting for Redis; beyond that their copies are dropped (counted).
const QUEUE: usize = 1024;

pub struct Mirror {
    tx: mpsc::Sender<Vec<String>>,
    /// Entries not copied (Redis failed, or too many waited).
    pub failures: Arc<AtomicU64>,
}

impl Mirror {
    /// Starts the copying task (connecting on first use, so Redis may be down at start).
    pub fn start(redis_url: &str, stream: &str) -> anyhow::Result<Self> {
        let conn =
            LazyConnection::open(redis_url, Duration::from_secs(1)).map_err(anyhow::Error::msg)?;
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(QUEUE);
        let failures = Arc::new(AtomicU64::new(0));
        let (counted, stream) = (failures.clone(), stream.to_string());
        tokio::spawn(async move {
            while let Some(lines) = rx.recv().await {
                if let Err(e) = xadd(&conn, &stream, &lines).await {
                    counted.fetch_add(lines.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, entries = lines.len(), "audit entries not copied to Redis");
                }
            }
        });
        Ok(Self { tx, failures })
    }

    /// Queues the copies of `lines` (entries just appended to the file).
    pub fn send(&self, lines: Vec<String>) {
        let n = lines.len() as u64;
        if self.tx.try_send(lines).is_err() {
            self.failures.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(
                entries = n,
                "audit entries not copied to Redis: too many waiting"
            );
        }
    }
}

async fn xadd(conn: &LazyConnection, stream: &str, lines: &[String]) -> Result<(), String> {
    let mut c = conn.get().await?;
    let mut pipe = redis::pipe();
    for line in lines {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_LEN)
            .arg("*")
            .arg("entry")
            .arg(line)
            .ignore();
    }
    pipe.query_async::<()>(&mut c)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared Redis of the machine (the tests' Redis), on a key of this test alone.
    const REDIS: &str = "redis://127.0.0.1:6379";

    async fn entries(stream: &str) -> Vec<String> {
        let client = redis::Client::open(REDIS).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        reply.into_iter().map(|(_, mut f)| f.remove(0).1).collect()
    }

    #[tokio::test]
    async fn appended_entries_are_copied_in_order_and_failures_counted() {
        let stream = format!("nexus:audit:test:{}", std::process::id());
        let mirror = Mirror::start(REDIS, &stream).unwrap();
        mirror.send(vec!["{\"seq\":1}".into(), "{\"seq\":2}".into()]);
        mirror.send(vec!["{\"seq\":3}".into()]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            let got = entries(&stream).await;
            if got.len() >= 3 || std::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client = redis::Client::open(REDIS).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(got, ["{\"seq\":1}", "{\"seq\":2}", "{\"seq\":3}"]);
        assert_eq!(mirror.failures.load(Ordering::Relaxed), 0);

        // Nothing listens on port 1: each entry is counted, none is lost silently.
        let down = Mirror::start("redis://127.0.0.1:1", &stream).unwrap();
        down.send(vec!["a".into(), "b".into()]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while down.failures.load(Ordering::Relaxed) < 2 {
            assert!(std::time::Instant::now() < deadline, "failures not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
