//! `--config-dir` followed while the service runs, as envoyproxy/ratelimit follows its runtime
//! directory: a changed, added or removed file takes effect without a restart; a directory
//! that no longer loads (a bad file, a domain in two files) is refused whole, logged with the
//! file and JSON path, and the last configuration that loaded keeps serving.
//!
//! The directory is read again every interval and compared by contents, not timestamps, so an
//! edit in place, a file moved into place and a Kubernetes ConfigMap volume's swap of its
//! `..data` link are all seen, and an unchanged directory costs one read of small files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::limits::{self, Limits};
use crate::server::SharedLimiter;

/// A configuration directory and what was last read from it.
pub struct ConfigDir {
    dir: PathBuf,
    merge_domains: bool,
    /// The files last read, loaded or refused: a refused directory is reported once, not at
    /// every read, and loaded again only when it changes.
    seen: Vec<(String, String)>,
    /// The last directory-read error reported, so a lasting one is reported once.
    unreadable: Option<String>,
}

/// What one look at the directory found.
pub enum Reload {
    Unchanged,
    /// The directory changed and loads: these are the limits to serve.
    Loaded(Limits),
    /// The directory changed and does not load (or cannot be read): why, starting with the
    /// file's name. The limits being served stay.
    Refused(String),
}

impl ConfigDir {
    /// Loads `dir` once; a directory that does not load is an error here (the service does not
    /// start without limits).
    pub fn open(dir: PathBuf, merge_domains: bool) -> Result<(Self, Limits)> {
        let seen = limits::read_dir(&dir)?;
        let loaded = Limits::from_files(&seen, merge_domains)?;
        let this = Self {
            dir,
            merge_domains,
            seen,
            unreadable: None,
        };
        Ok((this, loaded))
    }

    /// Reads the directory again and loads it if it changed.
    pub fn check(&mut self) -> Reload {
        let files = match limits::read_dir(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                let why = format!("{e:#}");
                if self.unreadable.as_ref() == Some(&why) {
                    return Reload::Unchanged;
                }
                self.unreadable = Some(why.clone());
                return Reload::Refused(why);
            }
        };
        self.unreadable = None;
        if files == self.seen {
            return Reload::Unchanged;
        }
        let loaded = Limits::from_files(&files, self.merge_domains);
        self.seen = files;
        match loaded {
            Ok(limits) => Reload::Loaded(limits),
            Err(e) => Reload::Refused(format!("{e:#}")),
        }
    }

    /// Checks the directory every `interval` for as long as the service runs, and serves what
    /// loads.
    pub async fn follow(mut self, limiter: SharedLimiter, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.check() {
                Reload::Unchanged => {}
                Reload::Loaded(limits) => {
                    for warning in limits.warnings() {
                        tracing::warn!("{warning}");
                    }
                    let domains: Vec<&str> = limits.domains().collect();
                    tracing::info!(dir = %self.dir.display(), ?domains, "rate limits reloaded");
                    limiter.set_limits(limits);
                }
                Reload::Refused(why) => {
                    tracing::error!(
                        dir = %self.dir.display(),
                        error = %why,
                        "rate limits not reloaded; the last configuration that loaded keeps serving"
                    );
                }
            }
        }
    }
}
