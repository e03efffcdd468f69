//! npm packages the tests run with node, each pinned by a `package.json` kept in this crate
//! (`toolenv/<name>/`, beside the scripts that use them) and installed into the cache
//! (`<cache>/<name>/`). A changed `package.json` means a new install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::progress::Step;

pub struct NpmPackages {
    /// The folder's name, in this crate and in the cache.
    pub name: &'static str,
    /// A path under `node_modules` that exists once installed.
    pub installed_marker: &'static str,
}

impl NpmPackages {
    fn sources(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(self.name)
    }

    fn cached(&self) -> PathBuf {
        crate::cache_dir().join(self.name)
    }

    fn installed(&self, dir: &Path) -> bool {
        dir.join("node_modules")
            .join(self.installed_marker)
            .is_dir()
            && crate::same_file(
                &self.sources().join("package.json"),
                &dir.join("package.json"),
            )
    }

    /// The install directory; never installs.
    pub fn dir(&self) -> Result<PathBuf> {
        let dir = self.cached();
        if self.installed(&dir) {
            return Ok(dir);
        }
        bail!(
            "{} is not installed in {}: run `cargo xtask setup`",
            self.installed_marker,
            dir.display()
        )
    }

    /// `script` of this crate's folder, copied beside `node_modules` (ES modules resolve
    /// imports next to the script) when it changed; never installs.
    pub fn script(&self, script: &str) -> Result<PathBuf> {
        let dir = self.dir()?;
        let installed = dir.join(script);
        let source = self.sources().join(script);
        if !crate::same_file(&source, &installed) {
            let _lock = crate::lock(&dir)?;
            crate::install_file(&source, &installed, 0o644)?;
        }
        Ok(installed)
    }

    /// `npm install` of the pinned packages into the cache (Debian's nodejs and npm when
    /// missing).
    pub fn install(&self, step: &Step) -> Result<PathBuf> {
        let dest = self.cached();
        let _lock = crate::lock(&dest)?;
        if self.installed(&dest) {
            return Ok(dest);
        }
        if !crate::apt::on_path("npm") {
            crate::apt::ensure(&["nodejs", "npm"])?;
        }
        step.say(&format!("npm install {}", self.installed_marker));
        std::fs::copy(
            self.sources().join("package.json"),
            dest.join("package.json"),
        )?;
        crate::run(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund"])
                .current_dir(&dest),
        )?;
        Ok(dest)
    }
}
