//! The audit log: filters send one record per decision that matters (an auth allow or deny,
//! a rate-limit denial, a guard refusal or finding) in batches; this service appends them to a hash-chained file
//! ([`chain`]: each entry carries the hash of the one before), and `nexus audit verify FILE`
//! checks a log end to end, naming the first broken record.
//!
//! With a Redis, every entry is also copied to the stream `nexus:audit` ([`mirror`]).
//!
//! A chain shows changes, removals and reorderings anywhere before its last entry. Cutting
//! entries off the end leaves a shorter valid chain: compare the head `verify` prints with
//! the one the service last logged (`audit batch appended`, with `seq` and `hash`), or pass
//! it as `--head`.

pub mod chain;
pub mod log;
pub mod mirror;
pub mod redis_chain;
pub mod service;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use log::ChainedLog;
pub use service::{Audit, RECORDS_PATH};

/// A configuration change applied (a route programmed, rejected or deleted; a configuration
/// version serving), as the audit record `source` appends: the event bus's event, its type
/// without the `nexus.` prefix (`route.programmed`, `config.applied`).
pub fn config_record(event: &nexus_events::Event, source: &str) -> serde_json::Value {
    let kind = event.kind();
    serde_json::json!({
        "source": source,
        "event": kind.strip_prefix("nexus.").unwrap_or(&kind),
        "subject": event.subject(),
        "data": event.data(),
        "time_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    })
}

/// Opens the log at `path` and serves it on `addr` (port 0: any), copying each entry to the
/// Redis stream [`mirror::STREAM`] when there is a Redis; the bound address.
pub async fn start(
    path: &Path,
    addr: SocketAddr,
    redis_url: Option<&str>,
) -> anyhow::Result<(SocketAddr, Arc<Audit>)> {
    let mirror = match redis_url {
        Some(url) => Some(mirror::Mirror::start(url, mirror::STREAM)?),
        None => None,
    };
    let audit = Audit::file(ChainedLog::open(path)?, mirror);
    let bound = service::serve(addr, audit.clone()).await?;
    Ok((bound, audit))
}

/// Serves a chain kept in the Redis stream `stream` on `addr`: the controller in a cluster,
/// where every replica appends to the one chain ([`redis_chain`]). The bound address.
pub async fn start_in_redis(
    addr: SocketAddr,
    redis_url: &str,
    stream: &str,
) -> anyhow::Result<(SocketAddr, Arc<Audit>)> {
    let audit = Audit::new(service::Store::Redis(Box::new(
        redis_chain::RedisChain::new(redis_url, stream)?,
    )));
    let bound = service::serve(addr, audit.clone()).await?;
    Ok((bound, audit))
}

/// `nexus audit verify --redis`: checks the chain in the stream `stream` from its oldest entry
/// kept; the report or the first broken record.
pub async fn verify_stream(
    redis_url: &str,
    stream: &str,
    head: Option<&str>,
) -> anyhow::Result<String> {
    let chain = redis_chain::RedisChain::new(redis_url, stream)?;
    let verifier = chain
        .verify()
        .await
        .map_err(|e| anyhow::anyhow!("{stream}: broken at {e}"))?;
    let got = verifier.head();
    check_head(stream, got, head)?;
    let trimmed = match verifier.first_seq() {
        1 => String::new(),
        first => format!(" (records before {first} were trimmed: checked from there)"),
    };
    Ok(format!(
        "{stream}: {} records, chain intact{trimmed}; head {}",
        got.seq, got.hash
    ))
}

/// With `want`, the chain must end at that hash: entries cut off the end leave a shorter
/// chain that is otherwise valid.
fn check_head(name: &str, got: &chain::Head, want: Option<&str>) -> anyhow::Result<()> {
    match want {
        Some(want) if !got.hash.eq_ignore_ascii_case(want) => anyhow::bail!(
            "{name}: the chain is intact but ends at record {} with hash {}, not at {want}: records were cut off the end",
            got.seq,
            got.hash
        ),
        _ => Ok(()),
    }
}

/// `nexus audit verify`: checks `path` end to end; with `head`, also that the log ends at
/// that hash (entries cut off the end are otherwise invisible). The report or the first
/// broken record.
pub fn verify_file(path: &Path, head: Option<&str>) -> anyhow::Result<String> {
    let f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let got = chain::verify(std::io::BufReader::new(f))
        .map_err(|b| anyhow::anyhow!("{}: broken at {b}", path.display()))?;
    check_head(&path.display().to_string(), &got, head)?;
    Ok(format!(
        "{}: {} records, chain intact; head {}",
        path.display(),
        got.seq,
        got.hash
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_reports_the_head_and_catches_records_cut_off_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = ChainedLog::open(&path).unwrap();
        let (first, _) = log.append(vec![serde_json::json!({"n": 1})]).unwrap();
        let (second, _) = log.append(vec![serde_json::json!({"n": 2})]).unwrap();
        let report = verify_file(&path, Some(&second.hash)).unwrap();
        assert!(
            report.ends_with(&format!("2 records, chain intact; head {}", second.hash)),
            "{report}"
        );
        // The last record cut off: still a valid chain, but not the head the service reported.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{}\n", text.lines().next().unwrap())).unwrap();
        assert!(verify_file(&path, None).is_ok());
        let e = verify_file(&path, Some(&second.hash))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("ends at record 1 with hash {}", first.hash)),
            "{e}"
        );
        assert!(e.contains("records were cut off the end"), "{e}");
    }
}
