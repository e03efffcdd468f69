//! The chained log file: appends batches of records, each entry linked to the one before.
//! Reopening a log continues its chain (after checking it end to end: a broken log is not
//! extended, so a break stays where it happened and `nexus audit verify` names it).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::chain::{self, Head};

pub struct ChainedLog {
    path: PathBuf,
    file: File,
    head: Head,
}

impl ChainedLog {
    /// Opens (or creates) the log at `path` and finds its head.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let head = match File::open(path) {
            Ok(f) => chain::verify(BufReader::new(f)).map_err(|b| {
                anyhow::anyhow!(
                    "{}: the audit chain is broken at {b}; not extending it",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Head::genesis(),
            Err(e) => anyhow::bail!("opening {}: {e}", path.display()),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            head,
        })
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` as one write, synced to disk before it returns: a batch the service
    /// acknowledged survives a crash. On an error the head stays where the file was. The new
    /// head, and the lines written.
    pub fn append(&mut self, records: Vec<Value>) -> anyhow::Result<(Head, Vec<String>)> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut head = self.head.clone();
        let mut lines = Vec::with_capacity(records.len());
        let mut text = String::new();
        for r in records {
            let (line, next) = chain::link(&head, time_ms, r);
            text.push_str(&line);
            text.push('\n');
            lines.push(line);
            head = next;
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.head = head.clone();
        Ok((head, lines))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_log_continues_its_chain_and_a_broken_one_is_not_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = ChainedLog::open(&path).unwrap();
        log.append(vec![
            serde_json::json!({"n": 1}),
            serde_json::json!({"n": 2}),
        ])
        .unwrap();
        drop(log);
        let mut log = ChainedLog::open(&path).unwrap();
        assert_eq!(log.head().seq, 2);
        let (head, lines) = log.append(vec![serde_json::json!({"n": 3})]).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(head.seq, 3);
        let verified = chain::verify(BufReader::new(File::open(&path).unwrap())).unwrap();
        assert_eq!(verified, head);

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"n\":2", "\"n\":7", 1)).unwrap();
        let e = ChainedLog::open(&path).err().unwrap().to_string();
        assert!(e.contains("broken at record 2 (line 2)"), "{e}");
    }
}
