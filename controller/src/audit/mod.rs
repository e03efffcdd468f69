//! The audit log: filters send one record per decision that matters (a guard refusal or
//! finding, ...) in batches; this service appends them to a hash-chained file
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
pub mod service;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use log::ChainedLog;
pub use service::{Audit, RECORDS_PATH};

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
    let audit = Audit::new(ChainedLog::open(path)?, mirror);
    let bound = service::serve(addr, audit.clone()).await?;
    Ok((bound, audit))
}

/// `nexus audit verify`: checks `path` end to end; with `head`, also that the log ends at
/// that hash (entries cut off the end are otherwise invisible). The report or the first
/// broken record.
pub fn verify_file(path: &Path, head: Option<&str>) -> anyhow::Result<String> {
    let f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    let got = chain::verify(std::io::BufReader::new(f))
        .map_err(|b| anyhow::anyhow!("{}: broken at {b}", path.display()))?;
    if let Some(want) = head {
        if !got.hash.eq_ignore_ascii_case(want) {
            anyhow::bail!(
                "{}: the chain is intact but ends at record {} with hash {}, not at {want}: records were cut off the end",
                path.display(),
                got.seq,
                got.hash
            );
        }
    }
    Ok(format!(
        "{}: {} records, chain intact; head {}",
        path.display(),
        got.seq,
        got.hash
    ))
}
