//! Prometheus and promtool, from Debian's `prometheus` package: the observability test scrapes
//! `nexus up` with a real Prometheus, and the chart's rules are checked with `promtool`.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The Debian package holding both binaries.
pub const PACKAGE: &str = "prometheus";

/// The `prometheus` server binary, or an error naming the command that installs it.
pub fn server() -> Result<PathBuf> {
    locate("prometheus")
}

/// `promtool` (rule checks, PromQL parsing), from the same package.
pub fn promtool() -> Result<PathBuf> {
    locate("promtool")
}

/// Installs Debian's `prometheus` package when a binary is missing (root only; otherwise the
/// error is the command to run).
pub fn install() -> Result<()> {
    crate::apt::ensure(&[PACKAGE])
}

fn locate(program: &str) -> Result<PathBuf> {
    let debian = PathBuf::from("/usr/bin").join(program);
    if crate::apt::is_executable(&debian) {
        return Ok(debian);
    }
    if crate::apt::on_path(program) {
        return Ok(PathBuf::from(program));
    }
    bail!("{program} not found; install it with `cargo xtask setup` (Debian's `{PACKAGE}` package)")
}
