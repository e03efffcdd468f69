//! # proxy-wasm-test-host
//!
//! Runs a real proxy-wasm filter (`.wasm`, ABI 0.2.1 as used by the Rust SDK `proxy-wasm`
//! 0.2.x) under wasmtime, with a strict, scriptable host that plays Envoy's role in tests.
//!
//! ```no_run
//! use proxy_wasm_test_host::{Action, Host};
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut host = Host::builder()
//!     .plugin_config(br#"{}"#)
//!     .allow_cluster("jwks")
//!     .build_from_file("target/filters/nexus_router.wasm")?;
//! assert!(host.start()?);
//! let mut http = host.http_context()?;
//! let action = http.request_headers(
//!     &[(":method", "GET"), (":path", "/lake/t"), ("x-nexus-upstream", "evil")],
//!     true,
//! )?;
//! assert_eq!(action, Action::Continue);
//! assert_eq!(http.request_header("x-nexus-upstream").as_deref(), Some("lake"));
//! println!("fuel: {:?}", host.fuel_log());
//! # Ok(())
//! # }
//! ```
//!
//! What the host does:
//! * implements every `env.proxy_*` import of ABI 0.2.1 and the few WASI preview1 functions a
//!   filter may import; any other import is defined as a function that traps naming itself;
//! * captures logs, local responses, metrics, shared data, queues, HTTP and gRPC callouts
//!   (which the test answers), the tick period, `proxy_done` and `proxy_continue_stream` calls;
//! * **strict mode** (default): a hostcall the test did not allow (`proxy_http_call` to a
//!   cluster not declared with [`HostBuilder::allow_cluster`], an unregistered
//!   `proxy_call_foreign_function`, ...) or one that would return an error the filter does not
//!   expect traps the filter, and the API call driving it returns an `Err` naming the hostcall.
//!   Non-strict mode returns the ABI error status to the filter and records a [`Violation`];
//! * a trap (including a Rust panic in the filter) is always an `Err`, and marks the VM as
//!   failed: later calls return `Err` too, as Envoy would have killed the VM;
//! * **fuel** (default on): each callback's consumed wasmtime fuel (≈ wasm instructions) is
//!   recorded in [`Host::fuel_log`].
//!
//! Relative paths given to [`HostBuilder::build_from_file`] are looked up in the current
//! directory and then its ancestors, so a workspace-relative path works from any crate's tests.
//! Compiled modules are cached by content, in the process and on disk (see
//! [`HostBuilder::build`]), so building many hosts, or running many test binaries, is cheap.

#![warn(missing_docs)]

mod abi;
mod state;
mod types;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{Engine, Instance, Module, Store, WasmParams, WasmResults};

pub use state::ForeignFunction;
pub use types::{
    deserialize_map, serialize_map, Action, FuelRecord, GrpcCallout, GrpcCalloutState, HeaderMap,
    HttpCallout, LocalResponse, LogEntry, LogLevel, MetricType, Status, StreamType, Violation,
};

use state::{CalloutData, State};
use types::{find_header, owned_map};

/// Context id of the plugin's root context.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Default fuel budget of one callback (see [`HostBuilder::fuel_budget`]).
pub const DEFAULT_FUEL_BUDGET: u64 = 10_000_000_000;

// -------------------------------------------------------------------------------------------
// Engines and the module cache

fn engine(fuel: bool) -> Result<Engine> {
    static ENGINES: Mutex<[Option<Engine>; 2]> = Mutex::new([None, None]);
    let mut engines = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &mut engines[usize::from(fuel)];
    if let Some(e) = slot {
        return Ok(e.clone());
    }
    let mut config = wasmtime::Config::new();
    config.consume_fuel(fuel);
    // Tests run few instructions; compile time dominates, and fuel counts wasm operators, so
    // it does not depend on the optimization level.
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let e = Engine::new(&config).map_err(anyhow::Error::from)?;
    *slot = Some(e.clone());
    Ok(e)
}

fn compile(bytes: &[u8], fuel: bool, what: &str) -> Result<Module> {
    type Cache = Mutex<HashMap<(bool, u64, usize), Module>>;
    static MODULES: OnceLock<Cache> = OnceLock::new();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let key = (fuel, hasher.finish(), bytes.len());
    // Held while compiling: parallel tests wait for one compilation instead of doing several.
    let mut cache = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let engine = engine(fuel)?;
    let file = disk_cache_dir().map(|d| d.join(format!("{:016x}-{}-{}.cwasm", key.1, key.2, fuel)));
    if let Some(file) = file.as_deref().filter(|f| f.exists()) {
        // SAFETY: the file was written by `Module::serialize` below, in a cache directory that
        // only this crate writes to; wasmtime checks its version and engine configuration.
        if let Ok(module) = unsafe { Module::deserialize_file(&engine, file) } {
            cache.insert(key, module.clone());
            return Ok(module);
        }
    }
    let module = Module::new(&engine, bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {what}"))?;
    if let (Some(file), Ok(serialized)) = (file, module.serialize()) {
        // Best effort: write to a temporary name, then rename, so readers never see a partial file.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() && std::fs::rename(&tmp, &file).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    cache.insert(key, module.clone());
    Ok(module)
}

/// Directory of the on-disk cache of compiled modules: `$PROXY_WASM_TEST_HOST_CACHE`, or
/// `proxy-wasm-test-host` in the system temp directory. Set the variable to `off` to disable.
fn disk_cache_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PROXY_WASM_TEST_HOST_CACHE") {
        Some(v) if v == "off" => return None,
        Some(v) => PathBuf::from(v),
        None => std::env::temp_dir().join("proxy-wasm-test-host"),
    };
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() || path.exists() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(path);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "wasm file {} not found in {} or any parent directory (for the Nexus filters, run \
         `cargo xtask build-filters` first)",
        path.display(),
        cwd.display()
    )
}

// -------------------------------------------------------------------------------------------
// Builder

/// Where the filter's code comes from: a file, or bytes (a wasm binary or WAT text).
#[derive(Clone, Debug)]
pub enum WasmSource {
    /// A `.wasm` (or `.wat`) file; relative paths are also looked up in parent directories.
    File(PathBuf),
    /// A wasm binary or WAT text.
    Bytes(Vec<u8>),
}

impl From<&Path> for WasmSource {
    fn from(p: &Path) -> Self {
        Self::File(p.to_path_buf())
    }
}
impl From<PathBuf> for WasmSource {
    fn from(p: PathBuf) -> Self {
        Self::File(p)
    }
}
impl From<&[u8]> for WasmSource {
    fn from(b: &[u8]) -> Self {
        Self::Bytes(b.to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for WasmSource {
    fn from(b: &[u8; N]) -> Self {
        Self::Bytes(b.to_vec())
    }
}
impl From<Vec<u8>> for WasmSource {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

/// Configures and builds a [`Host`]; get one with [`Host::builder`].
pub struct HostBuilder {
    vm_config: Vec<u8>,
    plugin_config: Vec<u8>,
    properties: HashMap<Vec<String>, Vec<u8>>,
    time_nanos: u64,
    strict: bool,
    fuel: bool,
    fuel_budget: u64,
    allowed_clusters: HashSet<String>,
    foreign: HashMap<String, ForeignFunction>,
    log_level: LogLevel,
    vm_id: String,
    shared_data: Vec<(String, Vec<u8>)>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self {
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            properties: HashMap::new(),
            time_nanos: nanos_since_epoch(SystemTime::now()),
            strict: true,
            fuel: true,
            fuel_budget: DEFAULT_FUEL_BUDGET,
            allowed_clusters: HashSet::new(),
            foreign: HashMap::new(),
            log_level: LogLevel::Trace,
            vm_id: String::new(),
            shared_data: Vec::new(),
        }
    }
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl HostBuilder {
    /// VM configuration, readable by the filter during `proxy_on_vm_start` only.
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_config = bytes.into();
        self
    }

    /// Plugin configuration, readable by the filter during `proxy_on_configure` only.
    pub fn plugin_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.plugin_config = bytes.into();
        self
    }

    /// A property returned by `proxy_get_property` for `path` (e.g. `&["plugin_name"]` or
    /// `&["request", "path"]`). Unknown properties return `NotFound`, which the SDK maps to
    /// `None`.
    pub fn property(mut self, path: &[&str], value: impl AsRef<[u8]>) -> Self {
        self.properties.insert(
            path.iter().map(|s| s.to_string()).collect(),
            value.as_ref().to_vec(),
        );
        self
    }

    /// The host clock (`proxy_get_current_time_nanoseconds`, WASI `clock_time_get`).
    /// Defaults to the real time at build; it only moves when the test moves it.
    pub fn time(mut self, t: SystemTime) -> Self {
        self.time_nanos = nanos_since_epoch(t);
        self
    }

    /// Like [`time`](Self::time), in nanoseconds since the Unix epoch.
    pub fn time_nanos(mut self, nanos: u64) -> Self {
        self.time_nanos = nanos;
        self
    }

    /// Strict mode (default `true`): disallowed or unexpected-error hostcalls trap and make
    /// the API call fail. With `false` they return the ABI error status and are only recorded
    /// in [`Host::violations`].
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Fuel metering (default `true`): record the fuel each callback consumes.
    pub fn fuel(mut self, fuel: bool) -> Self {
        self.fuel = fuel;
        self
    }

    /// Fuel given to each callback (default [`DEFAULT_FUEL_BUDGET`]); running out traps,
    /// which catches runaway loops. Only used with [`fuel`](Self::fuel) on.
    pub fn fuel_budget(mut self, budget: u64) -> Self {
        self.fuel_budget = budget;
        self
    }

    /// Allow `proxy_http_call` / `proxy_grpc_call` / `proxy_grpc_stream` to `cluster`.
    pub fn allow_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.allowed_clusters.insert(cluster.into());
        self
    }

    /// Register a foreign function for `proxy_call_foreign_function`. `f` gets the argument
    /// bytes and returns the result bytes, or a status returned to the filter.
    pub fn foreign_function(
        mut self,
        name: impl Into<String>,
        f: impl FnMut(&[u8]) -> std::result::Result<Vec<u8>, Status> + Send + 'static,
    ) -> Self {
        self.foreign.insert(name.into(), Box::new(f));
        self
    }

    /// Level returned by `proxy_get_log_level` (default `Trace`: log everything). All
    /// `proxy_log` calls are captured regardless.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// VM id used for shared queues (default `""`).
    pub fn vm_id(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = vm_id.into();
        self
    }

    /// Pre-populate shared data (`proxy_get_shared_data`), as another VM would have.
    pub fn shared_data(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.shared_data.push((key.into(), value.into()));
        self
    }

    /// Build from a `.wasm` file. Relative paths are tried against the current directory and
    /// then each of its ancestors.
    pub fn build_from_file(self, path: impl AsRef<Path>) -> Result<Host> {
        self.build(WasmSource::File(path.as_ref().to_path_buf()))
    }

    /// Build from a wasm binary or WAT text.
    pub fn build_from_bytes(self, bytes: impl AsRef<[u8]>) -> Result<Host> {
        self.build(WasmSource::Bytes(bytes.as_ref().to_vec()))
    }

    /// Compile, instantiate, run `_initialize` (or `_start`) and check the module exports
    /// `proxy_abi_version_0_2_1`. Call [`Host::start`] next.
    ///
    /// Compiled code is cached by content hash in the process and on disk, in
    /// `$PROXY_WASM_TEST_HOST_CACHE` (default: `proxy-wasm-test-host` in the temp directory;
    /// `off` disables it), so only the first test binary pays for compiling a large filter.
    pub fn build(self, source: impl Into<WasmSource>) -> Result<Host> {
        let (bytes, what) = match source.into() {
            WasmSource::File(p) => {
                let p = resolve(&p)?;
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                (bytes, p.display().to_string())
            }
            WasmSource::Bytes(b) => (b, "in-memory module".to_string()),
        };
        let module = compile(&bytes, self.fuel, &what)?;
        let mut shared = BTreeMap::new();
        for (i, (k, v)) in self.shared_data.into_iter().enumerate() {
            shared.insert(k, (v, i as u32 + 1));
        }
        let state = State {
            strict: self.strict,
            vm_id: self.vm_id,
            log_level: self.log_level,
            allowed_clusters: self.allowed_clusters,
            foreign: self.foreign,
            vm_config: self.vm_config,
            plugin_config: self.plugin_config,
            properties: self.properties,
            time_nanos: self.time_nanos,
            tick_period_ms: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            memory: None,
            alloc: None,
            callback: "",
            current_ctx: 0,
            effective_ctx: 0,
            streams: HashMap::new(),
            callout: CalloutData::default(),
            logs: Vec::new(),
            stdout: Vec::new(),
            hostcalls: Vec::new(),
            violations: Vec::new(),
            next_cas: shared.len() as u32,
            shared_data: shared,
            queues: Vec::new(),
            metrics: Vec::new(),
            http_calls: BTreeMap::new(),
            grpc_calls: BTreeMap::new(),
            next_token: 0,
            status: (0, String::new()),
            done_calls: Vec::new(),
        };
        let mut store = Store::new(module.engine(), state);
        let linker = abi::linker(&mut store, &module).map_err(anyhow::Error::from)?;
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiating {what}"))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = ["proxy_on_memory_allocate", "malloc"]
            .into_iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok());
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
        {
            let other: Vec<String> = module
                .exports()
                .map(|e| e.name().to_string())
                .filter(|n| n.starts_with("proxy_abi_version_"))
                .collect();
            bail!(
                "{what} does not export proxy_abi_version_0_2_1 (found {other:?}); only proxy-wasm \
                 ABI 0.2.1 is supported"
            );
        }
        let mut host = Host {
            store,
            instance,
            next_ctx: ROOT_CONTEXT_ID + 1,
            started: false,
            fuel: self.fuel,
            fuel_budget: self.fuel_budget,
            fuel_log: Vec::new(),
            failed: None,
        };
        host.store
            .data_mut()
            .streams
            .insert(ROOT_CONTEXT_ID, Default::default());
        if host.export_exists("_initialize") {
            host.invoke::<(), ()>("_initialize", 0, ())?;
        } else if host.export_exists("_start") {
            host.invoke::<(), ()>("_start", 0, ())?;
        }
        Ok(host)
    }
}

// -------------------------------------------------------------------------------------------
// Host

/// One filter VM with its root context, and the host state around it. See the crate docs.
pub struct Host {
    store: Store<State>,
    instance: Instance,
    next_ctx: u32,
    started: bool,
    fuel: bool,
    fuel_budget: u64,
    fuel_log: Vec<FuelRecord>,
    failed: Option<String>,
}

impl Host {
    /// Start configuring a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    fn export_exists(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Call export `name` for context `ctx`. `Ok(None)` when the module does not export it.
    fn invoke<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        ctx: u32,
        params: P,
    ) -> Result<Option<R>> {
        if let Some(why) = &self.failed {
            bail!("{name}: the VM already failed ({why}); Envoy would have killed it");
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let func = func
            .typed::<P, R>(&self.store)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("export {name} has an unexpected signature"))?;
        let st = self.store.data_mut();
        st.callback = name;
        st.current_ctx = ctx;
        st.effective_ctx = ctx;
        let first_log = st.logs.len();
        let first_violation = st.violations.len();
        if self.fuel {
            self.store
                .set_fuel(self.fuel_budget)
                .map_err(anyhow::Error::from)?;
        }
        let result = func.call(&mut self.store, params);
        if self.fuel {
            let left = self.store.get_fuel().map_err(anyhow::Error::from)?;
            self.fuel_log
                .push((name.to_string(), self.fuel_budget.saturating_sub(left)));
        }
        let st = self.store.data_mut();
        st.callback = "";
        st.callout = CalloutData::default();
        match result {
            Ok(r) => {
                if st.strict && st.violations.len() > first_violation {
                    let v: Vec<String> = st.violations[first_violation..]
                        .iter()
                        .map(|v| v.to_string())
                        .collect();
                    bail!(
                        "{name} (context {ctx}) made rejected hostcalls: {}",
                        v.join("; ")
                    );
                }
                Ok(Some(r))
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                let mut msg = format!("{name} (context {ctx}) trapped: {e:#}");
                let panics: Vec<&str> = st.logs[first_log..]
                    .iter()
                    .filter(|l| l.level == LogLevel::Critical)
                    .map(|l| l.message.as_str())
                    .collect();
                if !panics.is_empty() {
                    msg.push_str(&format!(
                        "\nfilter logged (critical): {}",
                        panics.join(" | ")
                    ));
                }
                st.violations.push(Violation {
                    hostcall: "trap".into(),
                    status: Status::InternalFailure,
                    message: msg.clone(),
                    context_id: ctx,
                });
                self.failed = Some(format!("{name} trapped"));
                Err(anyhow!(msg))
            }
        }
    }

    fn invoke_action<P: WasmParams>(
        &mut self,
        name: &'static str,
        ctx: u32,
        params: P,
    ) -> Result<Action> {
        Ok(self
            .invoke::<P, i32>(name, ctx, params)?
            .map_or(Action::Continue, Action::from_abi))
    }

    /// Create the root context, then run `proxy_on_vm_start` and `proxy_on_configure` (Envoy's
    /// order). Errors if vm start returns false; returns what configure returned.
    pub fn start(&mut self) -> Result<bool> {
        if self.started {
            bail!("Host::start called twice");
        }
        let root = ROOT_CONTEXT_ID as i32;
        self.invoke::<(i32, i32), ()>("proxy_on_context_create", ROOT_CONTEXT_ID, (root, 0))?;
        let vm_size = self.store.data().vm_config.len() as i32;
        let vm_ok =
            self.invoke::<(i32, i32), i32>("proxy_on_vm_start", ROOT_CONTEXT_ID, (root, vm_size))?;
        if vm_ok == Some(0) {
            bail!("proxy_on_vm_start returned false");
        }
        self.started = true;
        let size = self.store.data().plugin_config.len() as i32;
        Ok(self
            .invoke::<(i32, i32), i32>("proxy_on_configure", ROOT_CONTEXT_ID, (root, size))?
            .is_none_or(|v| v != 0))
    }

    /// Run `proxy_on_configure` again with a new plugin configuration (as on a config
    /// update); returns what it returned.
    pub fn reconfigure(&mut self, plugin_config: impl Into<Vec<u8>>) -> Result<bool> {
        self.store.data_mut().plugin_config = plugin_config.into();
        let size = self.store.data().plugin_config.len() as i32;
        let root = ROOT_CONTEXT_ID as i32;
        Ok(self
            .invoke::<(i32, i32), i32>("proxy_on_configure", ROOT_CONTEXT_ID, (root, size))?
            .is_none_or(|v| v != 0))
    }

    /// Create a new HTTP context (`proxy_on_context_create(id, root)`) and return a handle
    /// to drive it. Requires [`start`](Self::start).
    pub fn http_context(&mut self) -> Result<HttpContext<'_>> {
        if !self.started {
            bail!("call Host::start before creating HTTP contexts");
        }
        let id = self.next_ctx;
        self.next_ctx += 1;
        self.store.data_mut().streams.insert(id, Default::default());
        self.invoke::<(i32, i32), ()>(
            "proxy_on_context_create",
            id,
            (id as i32, ROOT_CONTEXT_ID as i32),
        )?;
        Ok(HttpContext { host: self, id })
    }

    /// A handle on an existing HTTP context, e.g. to continue driving it after answering a
    /// callout.
    pub fn http(&mut self, id: u32) -> Result<HttpContext<'_>> {
        if id == ROOT_CONTEXT_ID || !self.store.data().streams.contains_key(&id) {
            bail!("no HTTP context {id}");
        }
        Ok(HttpContext { host: self, id })
    }

    // ---- time and ticks

    /// What `proxy_get_log_level` answers from now on (Envoy's `/logging?level=` at runtime).
    pub fn set_log_level(&mut self, level: LogLevel) {
        self.store.data_mut().log_level = level;
    }

    /// Set the host clock.
    pub fn set_time(&mut self, t: SystemTime) {
        self.store.data_mut().time_nanos = nanos_since_epoch(t);
    }

    /// Set the host clock, in nanoseconds since the Unix epoch.
    pub fn set_time_nanos(&mut self, nanos: u64) {
        self.store.data_mut().time_nanos = nanos;
    }

    /// Move the host clock forward.
    pub fn advance_time(&mut self, by: Duration) {
        let st = self.store.data_mut();
        st.time_nanos = st.time_nanos.saturating_add(by.as_nanos() as u64);
    }

    /// The host clock, in nanoseconds since the Unix epoch.
    pub fn time_nanos(&self) -> u64 {
        self.store.data().time_nanos
    }

    /// Tick period set by the filter (`None` if never set or set to 0).
    pub fn tick_period(&self) -> Option<Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms as u64)),
        }
    }

    /// Run `proxy_on_tick` on the root context (the clock is not moved: use
    /// [`advance_time`](Self::advance_time)).
    pub fn tick(&mut self) -> Result<()> {
        self.invoke::<i32, ()>("proxy_on_tick", ROOT_CONTEXT_ID, ROOT_CONTEXT_ID as i32)?;
        Ok(())
    }

    // ---- observations

    /// All `proxy_log` calls so far.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// Take (and clear) the captured logs.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Whether any captured log message contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.message.contains(needle))
    }

    /// What the module wrote to WASI stdout/stderr.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.store.data().stdout).into_owned()
    }

    /// Every hostcall the filter made, in order (names like `proxy_get_header_map_value`).
    pub fn hostcall_log(&self) -> &[&'static str] {
        &self.store.data().hostcalls
    }

    /// Rejected hostcalls and traps so far (see [`HostBuilder::strict`]).
    pub fn violations(&self) -> &[Violation] {
        &self.store.data().violations
    }

    /// Fuel consumed by each callback so far, in call order.
    pub fn fuel_log(&self) -> &[FuelRecord] {
        &self.fuel_log
    }

    /// Fuel consumed by the most recent callback.
    pub fn last_fuel(&self) -> Option<u64> {
        self.fuel_log.last().map(|(_, f)| *f)
    }

    /// Counter or gauge value by name.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.store
            .data()
            .metrics
            .iter()
            .find(|m| m.name == name && m.kind != MetricType::Histogram)
            .map(|m| m.value)
    }

    /// All counters and gauges, by name.
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        self.store
            .data()
            .metrics
            .iter()
            .filter(|m| m.kind != MetricType::Histogram)
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    /// Samples recorded in histogram `name`.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.store
            .data()
            .metrics
            .iter()
            .find(|m| m.name == name && m.kind == MetricType::Histogram)
            .map(|m| m.samples.clone())
    }

    /// Shared data value of `key`.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.store
            .data()
            .shared_data
            .get(key)
            .map(|(v, _)| v.clone())
    }

    /// Shared data value and CAS of `key`.
    pub fn shared_data_cas(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store.data().shared_data.get(key).cloned()
    }

    /// All shared data.
    pub fn shared_data_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.store
            .data()
            .shared_data
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Set shared data as another VM would (bumps the CAS).
    pub fn set_shared_data(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        let st = self.store.data_mut();
        let cas = st.next_cas();
        st.shared_data.insert(key.into(), (value.into(), cas));
    }

    /// A property's current value (set by the builder, the test or the filter).
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.store.data().properties.get(&key).cloned()
    }

    /// Set a property.
    pub fn set_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) {
        let key = path.iter().map(|s| s.to_string()).collect();
        self.store.data_mut().properties.insert(key, value.into());
    }

    /// Contexts that called `proxy_done`, in order.
    pub fn done_calls(&self) -> &[u32] {
        &self.store.data().done_calls
    }

    // ---- shared queues

    /// Id of the queue `name` registered by this VM.
    pub fn queue_id(&self, name: &str) -> Option<u32> {
        let st = self.store.data();
        st.queues
            .iter()
            .position(|q| q.vm_id == st.vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    /// Items waiting in queue `name`.
    pub fn queue_items(&self, name: &str) -> Vec<Vec<u8>> {
        let st = self.store.data();
        st.queues
            .iter()
            .find(|q| q.vm_id == st.vm_id && q.name == name)
            .map(|q| q.items.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Enqueue `item` on the queue `name` (as another VM would) and run
    /// `proxy_on_queue_ready` on the context that registered it.
    pub fn enqueue(&mut self, name: &str, item: impl Into<Vec<u8>>) -> Result<()> {
        let id = self
            .queue_id(name)
            .ok_or_else(|| anyhow!("queue {name:?} was not registered by the filter"))?;
        let q = &mut self.store.data_mut().queues[id as usize - 1];
        q.items.push_back(item.into());
        let owner = q.owner_context;
        self.invoke::<(i32, i32), ()>("proxy_on_queue_ready", owner, (owner as i32, id as i32))?;
        Ok(())
    }

    // ---- HTTP callouts

    /// HTTP callouts not answered yet, by token order.
    pub fn http_calls(&self) -> Vec<HttpCallout> {
        self.store.data().http_calls.values().cloned().collect()
    }

    /// The pending HTTP callout with `token`.
    pub fn http_call(&self, token: u32) -> Option<HttpCallout> {
        self.store.data().http_calls.get(&token).cloned()
    }

    /// Answer HTTP callout `token` (headers should include `:status`) and run
    /// `proxy_on_http_call_response` on the context that made it.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        self.respond_http_call_with_trailers(token, headers, body, &[])
    }

    /// [`respond_http_call`](Self::respond_http_call) with response trailers.
    pub fn respond_http_call_with_trailers(
        &mut self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        self.take_http_call(token)?;
        let st = self.store.data_mut();
        st.callout.http_headers = Some(owned_map(headers));
        st.callout.http_body = Some(body.to_vec());
        st.callout.http_trailers = Some(owned_map(trailers));
        self.deliver_http_response(
            ROOT_CONTEXT_ID,
            token,
            headers.len(),
            body.len(),
            trailers.len(),
        )
    }

    /// Fail HTTP callout `token` (reset/timeout): Envoy calls `proxy_on_http_call_response`
    /// with no headers, body or trailers.
    pub fn fail_http_call(&mut self, token: u32) -> Result<()> {
        self.take_http_call(token)?;
        let st = self.store.data_mut();
        st.callout.http_headers = Some(Vec::new());
        st.callout.http_trailers = Some(Vec::new());
        self.deliver_http_response(ROOT_CONTEXT_ID, token, 0, 0, 0)
    }

    fn take_http_call(&mut self, token: u32) -> Result<HttpCallout> {
        let st = self.store.data_mut();
        st.http_calls.remove(&token).ok_or_else(|| {
            anyhow!(
                "no pending HTTP call with token {token} (pending: {:?})",
                st.http_calls.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Envoy owns every callout by the plugin's root context (its hostcalls take the calling
    /// context's `root_context()`), so answers arrive on the root context, whichever context
    /// dispatched the call: a filter must match them by token.
    fn deliver_http_response(
        &mut self,
        ctx: u32,
        token: u32,
        nh: usize,
        nb: usize,
        nt: usize,
    ) -> Result<()> {
        self.invoke::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            ctx,
            (ctx as i32, token as i32, nh as i32, nb as i32, nt as i32),
        )?;
        Ok(())
    }

    // ---- gRPC callouts

    /// All gRPC callouts (unary and streams), by token order, with their state.
    pub fn grpc_calls(&self) -> Vec<GrpcCallout> {
        self.store.data().grpc_calls.values().cloned().collect()
    }

    fn grpc_ctx(&self, token: u32) -> Result<(u32, bool)> {
        match self.store.data().grpc_calls.get(&token) {
            Some(g) if g.state == GrpcCalloutState::Finished => {
                bail!("gRPC call {token} is already finished")
            }
            // Delivered on the root context, as Envoy does (see `deliver_http_response`).
            Some(g) => Ok((ROOT_CONTEXT_ID, g.streaming)),
            None => bail!("no gRPC call with token {token}"),
        }
    }

    fn set_grpc_state(&mut self, token: u32, state: GrpcCalloutState) {
        if let Some(g) = self.store.data_mut().grpc_calls.get_mut(&token) {
            g.state = state;
        }
    }

    /// Deliver a response message on gRPC callout `token` (`proxy_on_grpc_receive`). For a
    /// unary call this completes it successfully.
    pub fn grpc_receive(&mut self, token: u32, message: &[u8]) -> Result<()> {
        let (ctx, streaming) = self.grpc_ctx(token)?;
        if !streaming {
            self.set_grpc_state(token, GrpcCalloutState::Finished);
        }
        self.store.data_mut().callout.grpc_message = Some(message.to_vec());
        self.invoke::<(i32, i32, i32), ()>(
            "proxy_on_grpc_receive",
            ctx,
            (ctx as i32, token as i32, message.len() as i32),
        )?;
        Ok(())
    }

    /// Deliver initial metadata on gRPC callout `token`.
    pub fn grpc_receive_initial_metadata(
        &mut self,
        token: u32,
        metadata: &[(&str, &str)],
    ) -> Result<()> {
        let (ctx, _) = self.grpc_ctx(token)?;
        self.store.data_mut().callout.grpc_initial_metadata = Some(owned_map(metadata));
        self.invoke::<(i32, i32, i32), ()>(
            "proxy_on_grpc_receive_initial_metadata",
            ctx,
            (ctx as i32, token as i32, metadata.len() as i32),
        )?;
        Ok(())
    }

    /// Deliver trailing metadata on gRPC callout `token`.
    pub fn grpc_receive_trailing_metadata(
        &mut self,
        token: u32,
        metadata: &[(&str, &str)],
    ) -> Result<()> {
        let (ctx, _) = self.grpc_ctx(token)?;
        self.store.data_mut().callout.grpc_trailing_metadata = Some(owned_map(metadata));
        self.invoke::<(i32, i32, i32), ()>(
            "proxy_on_grpc_receive_trailing_metadata",
            ctx,
            (ctx as i32, token as i32, metadata.len() as i32),
        )?;
        Ok(())
    }

    /// Close gRPC callout `token` with a gRPC status (`proxy_on_grpc_close`; the filter reads
    /// `status` and `message` with `proxy_get_status`). Use this for failed unary calls and to
    /// end streams.
    pub fn grpc_close(&mut self, token: u32, status: u32, message: &str) -> Result<()> {
        let (ctx, _) = self.grpc_ctx(token)?;
        self.set_grpc_state(token, GrpcCalloutState::Finished);
        self.store.data_mut().status = (status, message.to_string());
        self.invoke::<(i32, i32, i32), ()>(
            "proxy_on_grpc_close",
            ctx,
            (ctx as i32, token as i32, status as i32),
        )?;
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// HTTP context

/// Drives one HTTP context (stream) of a [`Host`]. Derefs to the `Host`, so host
/// observations and callout answers are available on it too.
pub struct HttpContext<'a> {
    host: &'a mut Host,
    id: u32,
}

impl Deref for HttpContext<'_> {
    type Target = Host;
    fn deref(&self) -> &Host {
        self.host
    }
}

impl DerefMut for HttpContext<'_> {
    fn deref_mut(&mut self) -> &mut Host {
        self.host
    }
}

impl HttpContext<'_> {
    /// The context id (pass it to [`Host::http`] to get this handle back).
    pub fn id(&self) -> u32 {
        self.id
    }

    fn stream(&mut self) -> &mut state::Stream {
        let id = self.id;
        self.host.store.data_mut().stream(id)
    }

    fn stream_ref(&self) -> Option<&state::Stream> {
        self.host.store.data().streams.get(&self.id)
    }

    fn headers(
        &mut self,
        map: usize,
        name: &'static str,
        headers: &[(&str, &str)],
        eos: Option<bool>,
    ) -> Result<Action> {
        self.stream().maps[map] = owned_map(headers);
        let (id, n) = (self.id as i32, headers.len() as i32);
        match eos {
            Some(eos) => self
                .host
                .invoke_action(name, self.id, (id, n, i32::from(eos))),
            None => self.host.invoke_action(name, self.id, (id, n)),
        }
    }

    fn body(&mut self, buf: usize, name: &'static str, chunk: &[u8], eos: bool) -> Result<Action> {
        let s = self.stream();
        if s.buffering[buf] {
            s.bodies[buf].extend_from_slice(chunk);
        } else {
            s.bodies[buf] = chunk.to_vec();
        }
        let size = s.bodies[buf].len() as i32;
        let id = self.id as i32;
        let action = self
            .host
            .invoke_action(name, self.id, (id, size, i32::from(eos)))?;
        self.stream().buffering[buf] = action == Action::Pause;
        Ok(action)
    }

    /// Run `proxy_on_request_headers` with these request headers.
    pub fn request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers(0, "proxy_on_request_headers", headers, Some(end_of_stream))
    }

    /// Run `proxy_on_request_body` with a body chunk. As in Envoy, if the previous body
    /// callback returned `Pause` the chunk is appended to the buffered body.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(0, "proxy_on_request_body", chunk, end_of_stream)
    }

    /// Run `proxy_on_request_trailers`.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.headers(1, "proxy_on_request_trailers", trailers, None)
    }

    /// Run `proxy_on_response_headers` with these response headers.
    pub fn response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.headers(2, "proxy_on_response_headers", headers, Some(end_of_stream))
    }

    /// Run `proxy_on_response_body` (buffering as for [`request_body`](Self::request_body)).
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.body(1, "proxy_on_response_body", chunk, end_of_stream)
    }

    /// Run `proxy_on_response_trailers`.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        self.headers(3, "proxy_on_response_trailers", trailers, None)
    }

    /// Run `proxy_on_done`; returns its result (`true`: done now, `false`: the filter will call
    /// `proxy_done` later).
    pub fn done(&mut self) -> Result<bool> {
        Ok(self
            .host
            .invoke::<i32, i32>("proxy_on_done", self.id, self.id as i32)?
            .is_none_or(|v| v != 0))
    }

    /// Run `proxy_on_log`.
    pub fn log(&mut self) -> Result<()> {
        self.host
            .invoke::<i32, ()>("proxy_on_log", self.id, self.id as i32)?;
        Ok(())
    }

    /// Run `proxy_on_delete`. The context's recorded data stays inspectable.
    pub fn delete(&mut self) -> Result<()> {
        self.host
            .invoke::<i32, ()>("proxy_on_delete", self.id, self.id as i32)?;
        Ok(())
    }

    /// End the stream as Envoy does: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self) -> Result<()> {
        self.done()?;
        self.log()?;
        self.delete()
    }

    fn map(&self, i: usize) -> HeaderMap {
        self.stream_ref()
            .map(|s| s.maps[i].clone())
            .unwrap_or_default()
    }

    fn map_value(&self, i: usize, name: &str) -> Option<String> {
        self.stream_ref()
            .and_then(|s| find_header(&s.maps[i], name).map(str::to_owned))
    }

    /// Request headers as the filter left them.
    pub fn request_header_map(&self) -> HeaderMap {
        self.map(0)
    }

    /// First value of request header `name` (case-insensitive), as the filter left it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.map_value(0, name)
    }

    /// Request trailers as the filter left them.
    pub fn request_trailer_map(&self) -> HeaderMap {
        self.map(1)
    }

    /// Response headers as the filter left them.
    pub fn response_header_map(&self) -> HeaderMap {
        self.map(2)
    }

    /// First value of response header `name` (case-insensitive), as the filter left it.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.map_value(2, name)
    }

    /// Response trailers as the filter left them.
    pub fn response_trailer_map(&self) -> HeaderMap {
        self.map(3)
    }

    /// The (buffered) request body as the filter left it.
    pub fn request_body_buffer(&self) -> Vec<u8> {
        self.stream_ref()
            .map(|s| s.bodies[0].clone())
            .unwrap_or_default()
    }

    /// The (buffered) response body as the filter left it.
    pub fn response_body_buffer(&self) -> Vec<u8> {
        self.stream_ref()
            .map(|s| s.bodies[1].clone())
            .unwrap_or_default()
    }

    /// The local response the filter sent on this stream, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.stream_ref().and_then(|s| s.local_response.clone())
    }

    /// Streams the filter resumed with `proxy_continue_stream`, in order.
    pub fn continued_streams(&self) -> Vec<StreamType> {
        self.stream_ref()
            .map(|s| s.continued.clone())
            .unwrap_or_default()
    }

    /// Whether the filter resumed the request (`resume_http_request`).
    pub fn request_resumed(&self) -> bool {
        self.continued_streams().contains(&StreamType::HttpRequest)
    }

    /// Whether the filter resumed the response (`resume_http_response`).
    pub fn response_resumed(&self) -> bool {
        self.continued_streams().contains(&StreamType::HttpResponse)
    }

    /// Streams the filter closed with `proxy_close_stream`, in order.
    pub fn closed_streams(&self) -> Vec<StreamType> {
        self.stream_ref()
            .map(|s| s.closed.clone())
            .unwrap_or_default()
    }

    /// Logs emitted while this context's callbacks ran.
    pub fn context_logs(&self) -> Vec<LogEntry> {
        self.logs()
            .iter()
            .filter(|l| l.context_id == self.id)
            .cloned()
            .collect()
    }
}
