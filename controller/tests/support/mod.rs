//! A real etcd + kube-apiserver per test (`nexus_toolenv::kube`), with the NexusRoute
//! CRD from the checked-in YAML and permissive Istio CRDs; helpers to run the `nexus` binary.
#![allow(dead_code)]

pub mod bus;
pub mod prometheus;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde::Deserialize;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    nexus_toolenv::kube::free_port().unwrap()
}

pub struct TestEnv {
    pub kubeconfig: PathBuf,
    // Dropped first: the servers stop before their directory goes.
    server: nexus_toolenv::kube::ApiServer,
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    /// Starts etcd + kube-apiserver on fresh ports in a temp dir.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = nexus_toolenv::kube::ApiServer::start(dir.path())
            .unwrap_or_else(|e| panic!("starting etcd + kube-apiserver: {e:#}"));
        Self {
            kubeconfig: server.kubeconfig.clone(),
            server,
            dir,
        }
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(cfg).unwrap()
    }

    /// Registers the NexusRoute CRD (from charts/nexus/crds) and the Istio fixture CRDs, and
    /// creates the namespaces; waits until the resources are served.
    pub async fn setup(&self, client: &Client, namespaces: &[&str]) {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for file in [
            repo_root().join("charts/nexus/crds/nexusroutes.yaml"),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-crds.yaml"),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let crd = CustomResourceDefinition::deserialize(doc).unwrap();
                crds.create(&PostParams::default(), &crd).await.unwrap();
            }
        }
        let ns_api: Api<Namespace> = Api::all(client.clone());
        for ns in namespaces {
            let n: Namespace =
                serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
            let _ = ns_api.create(&PostParams::default(), &n).await;
        }
        for kind in ["EnvoyFilter", "VirtualService", "DestinationRule"] {
            let api: Api<DynamicObject> = Api::all_with(
                client.clone(),
                &nexus_controller::controller::api_resource(kind),
            );
            wait_for(Duration::from_secs(30), || {
                let api = api.clone();
                async move { api.list(&Default::default()).await.is_ok() }
            })
            .await;
        }
        let routes: Api<nexus_controller::crd::NexusRoute> = Api::all(client.clone());
        wait_for(Duration::from_secs(30), || {
            let routes = routes.clone();
            async move { routes.list(&Default::default()).await.is_ok() }
        })
        .await;
    }
}

/// Polls `f` every 100 ms until true; panics after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within {timeout:?}");
}

/// Module files (fake `.wasm` bytes) and their `.sha256` files, as `xtask build-filters` lays
/// them out.
pub fn module_dir() -> tempfile::TempDir {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    for f in ["auth", "router", "guard", "ratelimit", "cache"] {
        let bytes = format!("\0asm\x01\0\0\0nexus-test-{f}").into_bytes();
        std::fs::write(dir.path().join(format!("nexus_{f}.wasm")), &bytes).unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            dir.path().join(format!("nexus_{f}.wasm.sha256")),
            format!("{hex}  nexus_{f}.wasm\n"),
        )
        .unwrap();
    }
    dir
}

/// A running `nexus controller` process; killed on drop.
pub struct ControllerProcess {
    pub child: Child,
    pub http_port: u16,
    pub modules_port: u16,
    pub identity: String,
    pub log: PathBuf,
}

impl ControllerProcess {
    pub fn spawn(env: &TestEnv, modules: &Path, identity: &str, lease_args: &[&str]) -> Self {
        let http_port = free_port();
        let modules_port = free_port();
        let log = env.dir.path().join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("controller")
            .arg("--modules")
            .arg(modules)
            .args(["--controller-namespace", "nexus-system"])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--modules-addr", &format!("127.0.0.1:{modules_port}")])
            .args(["--identity", identity])
            .args(lease_args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("RUST_LOG", "info,nexus_controller::server=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            http_port,
            modules_port,
            identity: identity.to_string(),
            log,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `nexus_controller_reconciles_total` from /metrics.
    pub fn reconciles(&self) -> u64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("nexus_controller_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET; (0, "") if the server is not up.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The group EnvoyFilter `ctrl` writes for `route` into `gateway_ns`, once it exists (60 s).
pub async fn envoy_filter_of(
    client: &Client,
    route: &nexus_controller::crd::NexusRoute,
    gateway_ns: &str,
    ctrl: &ControllerProcess,
) -> serde_json::Value {
    let group = nexus_controller::model::group_key(route).name();
    let filters: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        gateway_ns,
        &nexus_controller::controller::api_resource("EnvoyFilter"),
    );
    let start = Instant::now();
    loop {
        if let Ok(Some(ef)) = filters.get_opt(&group).await {
            return serde_json::to_value(ef).unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no EnvoyFilter {group}:\n{}",
            ctrl.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
