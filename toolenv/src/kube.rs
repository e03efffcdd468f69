//! A real etcd + kube-apiserver for the controller's tests, on 127.0.0.1 only.
//!
//! No registry this project reaches ships a kube-apiserver binary, but Debian ships the
//! `kubernetes` source package (v1.20, with its Go dependencies vendored) and the Go 1.19 to
//! build it, so the binary is built once from that and cached. etcd is Debian's `etcd-server`.
//! `KUBEBUILDER_ASSETS` (controller-runtime's envtest directory) is used instead when set.
//!
//! What v1.20 serves: CRDs, status subresources, server-side apply, watches, Leases and RBAC.
//! There is no controller-manager and no kubelet: Deployments never get Pods, owner-reference
//! garbage collection does not run, and CRDs have no CEL rules (added in 1.25).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::progress::Step;

/// Debian packages the build and the server need.
const BUILD_PACKAGES: [&str; 5] = ["golang-1.19-go", "etcd-server", "rsync", "make", "openssl"];
const GO_BIN: &str = "/usr/lib/go-1.19/bin";

fn cached() -> PathBuf {
    crate::cache_dir().join("kube").join("bin")
}

fn complete(dir: &Path) -> bool {
    ["etcd", "kube-apiserver"]
        .iter()
        .all(|b| crate::apt::is_executable(&dir.join(b)))
}

/// The directory holding `etcd` and `kube-apiserver`: `KUBEBUILDER_ASSETS` when set, else the
/// cache. Never installs.
pub fn assets() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if !complete(&dir) {
            bail!(
                "KUBEBUILDER_ASSETS={} lacks an executable etcd or kube-apiserver",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let dir = cached();
    if complete(&dir) {
        return Ok(dir);
    }
    bail!(
        "etcd and kube-apiserver are not in {}: run `cargo xtask setup` (a cold build takes minutes), or set KUBEBUILDER_ASSETS",
        dir.display()
    )
}

/// Builds kube-apiserver from Debian's source package and copies etcd next to it.
pub fn install(step: &Step) -> Result<PathBuf> {
    let bin = cached();
    let root = bin.parent().context("kube cache path")?.to_path_buf();
    let _lock = crate::lock(&root)?;
    if complete(&bin) {
        return Ok(bin);
    }
    step.say("(1/4) installing Go 1.19, etcd and build tools from Debian");
    crate::apt::ensure(&BUILD_PACKAGES)?;
    let src = root.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    step.say("(2/4) fetching Debian's kubernetes source package (~30 MB)");
    let tree = unpack_source(&src)?;
    step.say("(3/4) compiling kube-apiserver (about 4-7 min on 2 cores; one line every 30 s)");
    compile(step, &tree, &root)?;
    step.say("(4/4) installing kube-apiserver and etcd");
    crate::install_file(
        &tree.join("_output/bin/kube-apiserver"),
        &bin.join("kube-apiserver"),
        0o755,
    )?;
    crate::install_file(Path::new("/usr/bin/etcd"), &bin.join("etcd"), 0o755)?;
    // The source tree and Go's build cache are ~2 GB and no longer needed.
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(root.join("gocache"));
    Ok(bin)
}

/// Downloads the source package through a private apt configuration (a `deb-src` line for the
/// mirror this machine already uses; the system's sources stay untouched) and unpacks it.
fn unpack_source(src: &Path) -> Result<PathBuf> {
    let apt = src.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let list = apt.join("sources.list");
    std::fs::write(&list, deb_src_line()?)?;
    let opts = [
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
    ];
    let apt_get = || {
        let mut cmd = Command::new("apt-get");
        for o in &opts {
            cmd.args(["-o", o]);
        }
        cmd
    };
    crate::run(apt_get().args(["update", "-qq"]))?;
    crate::run(
        apt_get()
            .args(["source", "--download-only", "-qq", "kubernetes"])
            .current_dir(src),
    )?;
    let orig = std::fs::read_dir(src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        .context("apt-get source kubernetes left no .orig.tar.gz")?;
    let tree = src.join("tree");
    std::fs::create_dir_all(&tree)?;
    crate::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&orig)
            .arg("-C")
            .arg(&tree)
            .arg("--strip-components=1"),
    )?;
    replace_reflect2(src, &tree)?;
    Ok(tree)
}

/// Go 1.18+ needs reflect2 >= 1.0.2; the vendored 1.0.1 faults on the first custom object, so
/// Debian's packaged reflect2 replaces it.
fn replace_reflect2(src: &Path, tree: &Path) -> Result<()> {
    crate::run(
        Command::new("apt-get")
            .args(["download", "-qq", "golang-github-modern-go-reflect2-dev"])
            .current_dir(src),
    )?;
    let deb = std::fs::read_dir(src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.to_string_lossy().contains("reflect2") && p.extension().is_some_and(|e| e == "deb")
        })
        .context("apt-get download left no reflect2 .deb")?;
    let unpacked = src.join("reflect2");
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    std::fs::remove_dir_all(&vendored).context("removing the vendored reflect2")?;
    crate::run(
        Command::new("cp")
            .arg("-r")
            .arg(unpacked.join("usr/share/gocode/src/github.com/modern-go/reflect2"))
            .arg(&vendored),
    )?;
    Ok(())
}

/// `deb-src` for the first Debian mirror and release this machine's apt is configured with.
fn deb_src_line() -> Result<String> {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let one_line = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release")?;
    deb_src_line_from(&deb822, &one_line, &os_release)
}

/// [`deb_src_line`] from the files' texts: a deb822 `debian.sources` (Debian 12 and later) or
/// a one-line `sources.list`, and `/etc/os-release`.
fn deb_src_line_from(deb822: &str, one_line: &str, os_release: &str) -> Result<String> {
    let uri = deb822
        .lines()
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|v| v.split_whitespace().next())
        .or_else(|| {
            one_line
                .lines()
                .find_map(|l| l.strip_prefix("deb "))
                .and_then(|v| v.split_whitespace().find(|w| w.contains("://")))
        })
        .context("no Debian mirror in /etc/apt/sources.list(.d)")?
        .to_string();
    let release = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .context("no VERSION_CODENAME in /etc/os-release")?;
    Ok(format!("deb-src {uri} {release} main\n"))
}

fn compile(step: &Step, tree: &Path, root: &Path) -> Result<()> {
    let log_path = root.join("build.log");
    let log = std::fs::File::create(&log_path)?;
    let path = format!("{GO_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let status = step.run_with_heartbeat(
        Command::new("make")
            .args(["WHAT=cmd/kube-apiserver", "GOLDFLAGS=-s -w"])
            .current_dir(tree)
            .env("PATH", path)
            .env("GOCACHE", root.join("gocache"))
            .env("GOPROXY", "off")
            .env("HOME", root.join("home"))
            .env("CGO_ENABLED", "0")
            .stdout(log.try_clone()?)
            .stderr(log),
        "compiling kube-apiserver",
    )?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        bail!(
            "building kube-apiserver failed ({status}); last lines of {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// A running etcd + kube-apiserver in a directory of the caller's; both stopped on drop.
pub struct ApiServer {
    pub kubeconfig: PathBuf,
    pub port: u16,
    processes: Vec<Child>,
    dir: PathBuf,
}

/// The static token of the `system:masters` user the kubeconfig uses.
pub const ADMIN_TOKEN: &str = "admin-token";

impl ApiServer {
    /// Starts etcd and kube-apiserver on free loopback ports, with their state, certificates,
    /// logs and `kubeconfig` in `dir`; returns once `/readyz` answers.
    pub fn start(dir: &Path) -> Result<Self> {
        let assets = assets()?;
        let dir = std::path::absolute(dir)?;
        let pki = dir.join("pki");
        make_pki(&pki)?;
        let etcd_port = free_port_pair()?;
        let port = loop {
            let p = free_port()?;
            if p != etcd_port && p != etcd_port + 1 {
                break p;
            }
        };
        let mut server = Self {
            kubeconfig: dir.join("kubeconfig"),
            port,
            processes: Vec::new(),
            dir: dir.clone(),
        };
        server.spawn(
            &assets.join("etcd"),
            &etcd_args(&dir, etcd_port),
            "etcd.log",
        )?;
        server.spawn(
            &assets.join("kube-apiserver"),
            &apiserver_args(&pki, etcd_port, port),
            "apiserver.log",
        )?;
        std::fs::write(&server.kubeconfig, kubeconfig(&pki, port))?;
        server.wait_ready(&pki)?;
        Ok(server)
    }

    fn spawn(&mut self, program: &Path, args: &[String], log: &str) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(log))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.processes.push(child);
        Ok(())
    }

    fn wait_ready(&mut self, pki: &Path) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let ready = Command::new("curl")
                .args(["-sf", "--max-time", "2", "--cacert"])
                .arg(pki.join("ca.crt"))
                .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
                .arg(format!("https://127.0.0.1:{}/readyz", self.port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(exited) = self
                .processes
                .iter_mut()
                .find_map(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "etcd or kube-apiserver exited ({exited}):\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("kube-apiserver not ready within 60 s:\n{}", self.log_tail())
    }

    fn log_tail(&self) -> String {
        ["etcd.log", "apiserver.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {f}\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The API server first, so it never logs a lost etcd.
        for child in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn etcd_args(dir: &Path, port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    vec![
        format!("--data-dir={}", dir.join("etcd-data").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
    ]
}

fn apiserver_args(pki: &Path, etcd_port: u16, port: u16) -> Vec<String> {
    let p = |f: &str| pki.join(f).display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        "--insecure-port=0".into(),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--token-auth-file={}", p("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-cluster-ip-range=10.96.0.0/24".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        "--allow-privileged=true".into(),
    ]
}

fn kubeconfig(pki: &Path, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{ca}\"}}
users:
- name: admin
  user: {{token: {ADMIN_TOKEN}}}
contexts:
- name: testenv
  context: {{cluster: testenv, user: admin, namespace: default}}
current-context: testenv
",
        ca = pki.join("ca.crt").display()
    )
}

/// A CA, the API server's serving certificate (127.0.0.1 and localhost), the service-account
/// signing key, and the token file naming the admin user; made with the openssl command.
fn make_pki(pki: &Path) -> Result<()> {
    std::fs::create_dir_all(pki)?;
    std::fs::write(
        pki.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(
        pki.join("tokens.csv"),
        format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
    )?;
    let steps: [&[&str]; 5] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "365",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            "ext.cnf",
            "-out",
            "apiserver.crt",
        ],
        &["genrsa", "-out", "sa.key", "2048"],
        &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for args in steps {
        crate::run(Command::new("openssl").args(args).current_dir(pki))
            .context("making test certificates (apt-get install openssl)")?;
    }
    Ok(())
}

pub use crate::ports::{free_port, free_port_pair};

#[cfg(test)]
mod tests {
    use super::*;

    const OS: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n";

    #[test]
    fn deb_src_follows_the_configured_mirror_in_either_format() {
        let deb822 =
            "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n";
        assert_eq!(
            deb_src_line_from(deb822, "", OS).unwrap(),
            "deb-src http://mirror.example/debian bookworm main\n"
        );
        let list = "# old style\ndeb [arch=amd64] http://old.example/debian bookworm main\n";
        assert_eq!(
            deb_src_line_from("", list, OS).unwrap(),
            "deb-src http://old.example/debian bookworm main\n"
        );
        let e = deb_src_line_from("", "", OS).unwrap_err().to_string();
        assert!(e.contains("no Debian mirror"), "{e}");
    }
}
