//! `nexus up DIR`: the standalone gateway's runtime. Reads DIR, starts the Nexus services
//! (rate limiting; health, metrics and modules), demo upstreams if asked, and real Envoy with
//! file-based LDS/CDS; then follows DIR and applies each valid change without a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nexus_config::report::DEFAULT_INTERVAL_MS;
use nexus_events::{Event, Events, RouteStage};
use nexus_ratelimit_service::server::SharedLimiter;

use crate::enforcement::local::LocalEnforcement;
use crate::model::CompiledRoute;
use crate::server;
use crate::standalone::demo;
use crate::standalone::envoy::{self, Endpoints};
use crate::standalone::envoy_log;
use crate::standalone::gateway::{self, GatewaySpec, Snapshot};

/// `nexus up` options (flags override the NexusGateway of DIR).
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub modules: PathBuf,
    pub listen: Option<SocketAddr>,
    pub admin_port: Option<u16>,
    pub http: Option<SocketAddr>,
    /// `Some(url)`: Redis there; `None` with `memory` false: Redis on 127.0.0.1:6379 if it
    /// answers, memory otherwise.
    pub redis_url: Option<String>,
    pub memory: bool,
    /// Where the Envoy bootstrap, xDS files and log go (default: a new temp dir).
    pub state_dir: Option<PathBuf>,
    pub poll: Duration,
    /// How components (Envoy, Redis) are re-checked.
    pub health: crate::health::Schedule,
    /// Envoy's `wasm` logger level: `debug` logs one line per request and filter.
    pub filter_log_level: String,
    /// The event bus (`--amqp-url`); its outbox goes to the Redis the counters use.
    pub bus: Option<nexus_events::bus::BusOptions>,
}

/// A successfully compiled reading of DIR.
struct Config {
    gateway: GatewaySpec,
    routes: Vec<CompiledRoute>,
    fingerprint: u64,
}

/// Why DIR was not applied: every problem as `file: [route:] path (reason): message`, and
/// the routes refused, each with its first reason (`nexus.route.rejected` events).
struct Refusal {
    problems: Vec<String>,
    rejected: Vec<(String, String, String)>,
}

impl From<Vec<String>> for Refusal {
    fn from(problems: Vec<String>) -> Refusal {
        Refusal {
            problems,
            rejected: Vec::new(),
        }
    }
}

/// Reads and compiles DIR.
fn load(dir: &Path, opts: &Options) -> Result<Config, Refusal> {
    let fingerprint = fingerprint(dir);
    let Snapshot {
        mut gateway,
        inputs,
        mut problems,
    } = gateway::read_dir(dir).map_err(|e| Refusal::from(vec![e.to_string()]))?;
    let routes: Vec<&crate::crd::NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let outcomes = crate::plan::outcomes(&routes, &inputs.secrets, &Default::default());
    let mut compiled = Vec::new();
    let mut rejected = Vec::new();
    for (file, r) in &inputs.routes {
        let id = crate::plan::id(r);
        match outcomes.get(&id) {
            Some(Ok(c)) => compiled.push(c.clone()),
            Some(Err(ps)) => problems.extend(ps.iter().enumerate().map(|(i, p)| {
                if i == 0 {
                    rejected.push((id.0.clone(), id.1.clone(), p.reason.as_str().to_string()));
                }
                format!(
                    "{}: NexusRoute {}: {} ({}): {}",
                    file.display(),
                    id.1,
                    p.path,
                    p.reason.as_str(),
                    p.message
                )
            })),
            None => {}
        }
    }
    if !problems.is_empty() {
        return Err(Refusal { problems, rejected });
    }
    if let Some(l) = opts.listen {
        gateway.listen = l;
    }
    if let Some(p) = opts.admin_port {
        gateway.admin_port = p;
    }
    if let Some(h) = opts.http {
        gateway.http = h;
    }
    Ok(Config {
        gateway,
        routes: compiled,
        fingerprint,
    })
}

/// Changes when any YAML file of DIR is added, removed or edited.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in gateway::yaml_files(dir).unwrap_or_default() {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// The `service` of `nexus up`'s log lines.
pub const SERVICE: &str = "nexus-up";

/// Runs until Ctrl-C / SIGTERM (exit 0) or until Envoy dies (exit 1).
pub async fn up(opts: Options) -> Result<ExitCode> {
    let dir = std::path::absolute(&opts.dir)?;
    let config = load_or_explain(&dir, &opts)?;
    let modules = envoy::modules_in(&opts.modules)?;
    let envoy_bin = find_envoy()?;
    ensure_ports_free(&config.gateway)?;
    let state_dir = match &opts.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            TempOrKept::Kept(d.clone())
        }
        None => TempOrKept::Temp(tempfile::Builder::new().prefix("nexus-up-").tempdir()?),
    };
    let mut nexus = Nexus::start(&opts, &config, state_dir.path()).await?;
    let xds = Xds::new(state_dir.path())?;
    let requests = crate::request_metrics::start(&nexus.state, xds.access_log(), &config.routes);
    let mut gateway = Gateway {
        xds,
        upstreams: Upstreams::default(),
        modules,
        version: 1,
        requests,
    };
    gateway.write_first(&config, &nexus).await?;
    let mut envoy = Envoy::start(
        &envoy_bin,
        &config.gateway,
        &gateway.xds,
        state_dir.path(),
        &opts.filter_log_level,
    )
    .await?;
    nexus.serving(envoy.admin, &opts);
    announce(&nexus, &[], &config, gateway.version);

    // Each Envoy worker's cache filter uses its local cache only once its event stream is
    // live (and flushes it when the stream comes up); warming before that would fill nothing.
    // Envoy's main thread runs a root context too: one stream more than workers.
    wait_for_cache_subscribers(&nexus.state, config.gateway.concurrency.max(1) + 1).await;
    warm(&config).await;
    banner(
        &config,
        &dir,
        envoy.admin,
        &nexus.storage_note,
        state_dir.path(),
        &gateway.upstreams,
    );
    println!(
        "Invalidate cached responses everywhere: curl -X POST http://{}/cache/invalidate -H 'authorization: Bearer {}' -d '{{\"prefixes\":[\"/lake/\"]}}'",
        config.gateway.http, nexus.cache_token
    );
    println!(
        "Audit log (hash-chained auth, rate-limit and guard decisions): {0}; check it: nexus audit verify {0}",
        nexus.audit_log.display()
    );
    println!("Ctrl-C stops Envoy and Nexus.");
    let code = follow(&dir, &opts, config, &nexus, &mut gateway, &mut envoy).await?;
    let _ = envoy.child.start_kill();
    let _ = envoy.child.wait().await;
    tracing::info!("stopped");
    Ok(code)
}

/// DIR compiled, or every problem logged and an error saying nothing started.
fn load_or_explain(dir: &Path, opts: &Options) -> Result<Config> {
    load(dir, opts).or_else(|Refusal { problems, .. }| {
        for p in &problems {
            tracing::error!(problem = %p, "nothing started");
        }
        bail!(
            "{} problem(s) in {}; nothing started",
            problems.len(),
            dir.display()
        )
    })
}

fn ensure_ports_free(gateway: &GatewaySpec) -> Result<()> {
    ensure_free("listener", gateway.listen)?;
    ensure_free("nexus http", gateway.http)?;
    if gateway.admin_port != 0 {
        let admin = SocketAddr::from(([127, 0, 0, 1], gateway.admin_port));
        ensure_free("envoy admin", admin)?;
    }
    Ok(())
}

/// Serves until Ctrl-C, SIGTERM or Envoy's exit, applying each valid change of DIR and
/// re-warming the cache on its period.
async fn follow(
    dir: &Path,
    opts: &Options,
    mut config: Config,
    nexus: &Nexus,
    gateway: &mut Gateway,
    envoy: &mut Envoy,
) -> Result<ExitCode> {
    let mut current = config.fingerprint;
    let mut rewarm = tokio::time::interval(crate::warm::PERIOD);
    rewarm.tick().await;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(opts.poll);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = sigterm.recv() => return Ok(ExitCode::SUCCESS),
            status = envoy.child.wait() => {
                tracing::error!(envoy_log = %tail(&envoy.log), "envoy exited ({})",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                return Ok(ExitCode::FAILURE);
            }
            _ = rewarm.tick() => warm(&config).await,
            _ = tick.tick() => {
                if fingerprint(dir) == current {
                    continue;
                }
                current = fingerprint(dir);
                let Some(next) = reload(dir, opts, &config, gateway.version, &nexus.events) else {
                    continue;
                };
                current = next.fingerprint;
                if gateway.change(&config, &next, nexus, envoy.admin).await {
                    config = next;
                }
            }
        }
    }
}

/// DIR read again, or its problems logged as not applied and its refused routes announced.
fn reload(
    dir: &Path,
    opts: &Options,
    config: &Config,
    version: u64,
    events: &Events,
) -> Option<Config> {
    match load(dir, opts) {
        Ok(next) => {
            if let Some(why) = needs_restart(&config.gateway, &next.gateway) {
                tracing::warn!(
                    "{why} changed: restart `nexus up` to apply it; routes are applied now"
                );
            }
            Some(next)
        }
        Err(Refusal { problems, rejected }) => {
            for p in problems {
                tracing::warn!(problem = %p, "change in {} NOT applied (still serving version {version})", dir.display());
            }
            for (ns, name, reason) in rejected {
                events.publish(Event::route_rejected(&ns, &name, None, &reason));
            }
            None
        }
    }
}

/// The Nexus side of `nexus up`: the rate-limit, cache and audit services, the event bus,
/// and the health/metrics/modules server.
struct Nexus {
    limiter: SharedLimiter,
    state: Arc<server::State>,
    services: Services,
    audit_log: PathBuf,
    cache_token: String,
    storage_note: String,
    events: Events,
    bus_check: Option<crate::health::Check>,
    /// Envoy's reports against what was applied: the `enforced` health component.
    enforced: Arc<LocalEnforcement>,
}

impl Nexus {
    /// Hands the routes' opaque-token providers and sign-in provider (client secrets from
    /// DIR's Secrets) to the sessions service, which checks tokens and signs browsers in.
    fn serve_introspection(&self, config: &Config) {
        if let Some(sessions) = self.state.sessions.get() {
            let providers = config
                .routes
                .iter()
                .flat_map(|r| r.introspection.clone())
                .collect();
            sessions.introspector().set_providers(providers);
            // One sign-in provider per gateway: the oldest route's, as with the cookie.
            let sign_in = config.routes.iter().find_map(|r| r.sign_in.clone());
            if let Err(e) = sessions.set_sign_in(sign_in) {
                tracing::error!(error = %e, "browser sign-in is off");
            }
        }
    }

    async fn start(opts: &Options, config: &Config, state_dir: &Path) -> Result<Nexus> {
        let (redis_url, storage_note) = choose_storage(opts).await;
        let limiter = SharedLimiter::new(
            nexus_ratelimit_service::Limits::default(),
            redis_url.as_deref(),
            nexus_ratelimit_service::Algorithm::Gcra,
            nexus_ratelimit_service::UnknownDomain::Allow,
            Duration::from_millis(100),
        )?;
        let ratelimit_addr = free_local_addr()?;
        let serving = limiter.clone();
        tokio::spawn(async move {
            if let Err(e) = serving.serve(ratelimit_addr, std::future::pending()).await {
                tracing::error!("rate-limit service stopped: {e:#}");
            }
        });
        let state = Arc::new(server::State::new(Some(opts.modules.clone())));
        state.set("ratelimit", true, storage_note.clone());
        let cache_addr = free_local_addr()?;
        let cache_token = match std::env::var("NEXUS_CACHE_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => random_token()?,
        };
        let cache = crate::cache::Options {
            addr: cache_addr,
            redis_url: redis_url.clone(),
            token: Some(cache_token.clone()),
            replica: "nexus-up".to_string(),
        };
        crate::cache::start(cache, &state).await?;
        let audit_log = state_dir.join("audit.log");
        let audit = start_audit(&audit_log, redis_url.as_deref(), &state).await?;
        let (events, bus_check) = start_bus(opts, redis_url, &state, &limiter)?;
        let (serving, addr) = (state.clone(), config.gateway.http);
        tokio::spawn(async move {
            if let Err(e) = server::serve(addr, serving).await {
                tracing::error!("http server on {addr} stopped: {e:#}");
            }
        });
        let services = Services {
            ratelimit: ratelimit_addr,
            cache: cache_addr,
            audit,
        };
        let enforced = Arc::new(LocalEnforcement::default());
        let interval = Duration::from_millis(u64::from(DEFAULT_INTERVAL_MS));
        tokio::spawn(enforced.clone().follow(state.clone(), interval));
        Ok(Nexus {
            limiter,
            state,
            services,
            audit_log,
            cache_token,
            storage_note,
            events,
            bus_check,
            enforced,
        })
    }

    /// Envoy is up: health checks begin and `/health/ready` may answer ready.
    fn serving(&mut self, admin: SocketAddr, opts: &Options) {
        self.state
            .set("envoy", true, format!("admin http://{admin}"));
        // Redis is required here, as the Datapunk design lists it: `nexus up` serves nobody's
        // readiness probe but its user's (the controller keeps it optional: see main.rs).
        let checks = [
            Some(crate::health::http_ok("envoy", admin, "/ready")),
            crate::health::redis(&self.limiter, true),
            self.bus_check.take(),
        ];
        crate::health::spawn(
            self.state.clone(),
            checks.into_iter().flatten().collect(),
            opts.health,
        );
        self.state
            .started
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What Envoy is given: the xDS files, the demo upstreams, the filter modules, and the
/// version of the configuration it serves.
struct Gateway {
    xds: Xds,
    upstreams: Upstreams,
    modules: BTreeMap<String, PathBuf>,
    version: u64,
    /// The Datapunk request metrics, counted from Envoy's access log.
    requests: Arc<crate::request_metrics::RequestMetrics>,
}

impl Gateway {
    /// `config` as Envoy resources (demo upstreams started first) and rate limits.
    async fn render(
        &mut self,
        config: &Config,
        nexus: &Nexus,
    ) -> Result<(envoy::Resources, nexus_ratelimit_service::Limits)> {
        self.upstreams.ensure(config).await?;
        nexus.serve_introspection(config);
        let res = self.xds.render(
            config,
            &self.upstreams,
            &nexus.services,
            &self.modules,
            self.version,
        )?;
        let limits = nexus_ratelimit_service::Limits::new([res.configs.ratelimit.clone()])?;
        Ok((res, limits))
    }

    /// The first configuration, written before Envoy starts.
    async fn write_first(&mut self, config: &Config, nexus: &Nexus) -> Result<()> {
        let (res, limits) = self.render(config, nexus).await?;
        nexus.limiter.set_limits(limits);
        self.xds.write(&res)?;
        nexus.enforced.expect(res.filters);
        Ok(())
    }

    /// Applies `next` to the running Envoy; whether it now serves it.
    async fn change(
        &mut self,
        config: &Config,
        next: &Config,
        nexus: &Nexus,
        admin: SocketAddr,
    ) -> bool {
        self.version += 1;
        let version = self.version;
        match self.apply(next, nexus, admin).await {
            Ok(()) => {
                let rules = next.routes.iter().map(|r| r.rules.len()).sum::<usize>();
                tracing::info!(
                    "applied version {version}: {} route(s), {rules} rule(s)",
                    next.routes.len()
                );
                announce(nexus, &config.routes, next, version);
                let categories = crate::request_metrics::categories(&next.routes);
                self.requests.declare(categories.iter().map(String::as_str));
                warm(next).await;
                true
            }
            Err(e) => {
                tracing::error!("version {version} NOT applied: {e:#}");
                false
            }
        }
    }

    /// Clusters first (so routes never name a cluster Envoy lacks), then the listener; each
    /// confirmed through Envoy's update counters.
    async fn apply(&mut self, config: &Config, nexus: &Nexus, admin: SocketAddr) -> Result<()> {
        let (res, limits) = self.render(config, nexus).await?;
        let cds = "cluster_manager.cds";
        let before = update_counts(admin, cds).await?;
        self.xds.write_one(&self.xds.cds, &res.clusters)?;
        confirm(admin, cds, before).await?;
        // Limits before the listener: the new filter configuration may name new descriptors.
        nexus.limiter.set_limits(limits);
        let lds = "listener_manager.lds";
        let before = update_counts(admin, lds).await?;
        self.xds.write_one(&self.xds.lds, &res.listeners)?;
        confirm(admin, lds, before).await?;
        nexus.enforced.expect(res.filters);
        Ok(())
    }
}

/// The Envoy process `nexus up` runs, its admin address and its log file.
struct Envoy {
    child: tokio::process::Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy on the bootstrap that points at `xds`, its output written to `envoy.log`
    /// through [`envoy_log`], and waits until it is ready.
    async fn start(
        bin: &Path,
        gateway: &GatewaySpec,
        xds: &Xds,
        state: &Path,
        filter_log_level: &str,
    ) -> Result<Envoy> {
        let bootstrap = state.join("envoy.json");
        let config = envoy::bootstrap(gateway.admin_port, &xds.lds, &xds.cds);
        std::fs::write(&bootstrap, serde_json::to_vec_pretty(&config)?)?;
        let log_path = state.join("envoy.log");
        let admin_path = state.join("admin.txt");
        let log = envoy_log::create(&log_path)?;
        let mut child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", &gateway.concurrency.max(1).to_string()])
            .args(["--disable-hot-restart", "--drain-time-s", "15"])
            .args(["-l", "warning", "--component-log-level"])
            .arg(format!("wasm:{filter_log_level}"))
            .args(envoy::log_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        if let Some(out) = child.stdout.take() {
            envoy_log::spawn_copy(out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            envoy_log::spawn_copy(err, log);
        }
        match wait_ready(&mut child, &admin_path, &log_path).await {
            Ok(admin) => Ok(Envoy {
                child,
                admin,
                log: log_path,
            }),
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }
}

/// The audit service, appending to `log` (and copying to a Redis stream when there is a
/// Redis); its address.
async fn start_audit(
    log: &Path,
    redis_url: Option<&str>,
    state: &server::State,
) -> Result<SocketAddr> {
    let (addr, audit) = crate::audit::start(log, free_local_addr()?, redis_url).await?;
    let _ = state.audit.set(audit);
    let copy = match redis_url {
        Some(_) => format!(
            ", copied to the Redis stream {}",
            crate::audit::mirror::STREAM
        ),
        None => String::new(),
    };
    state.set(
        "audit",
        true,
        format!("appending to {}{copy}", log.display()),
    );
    Ok(addr)
}

/// The bus when `--amqp-url` is set (a disabled handle otherwise) and its health check;
/// commands act on this process's cache and rate-limit services.
fn start_bus(
    opts: &Options,
    redis_url: Option<String>,
    state: &server::State,
    limiter: &SharedLimiter,
) -> Result<(Events, Option<crate::health::Check>)> {
    let Some(mut options) = opts.bus.clone() else {
        state.set_component("rabbitmq", server::Component::disabled("no --amqp-url"));
        return Ok((Events::disabled(), None));
    };
    options.redis_url = redis_url;
    let services = nexus_events::services::Services {
        cache: state.cache.get().cloned(),
        sessions: state.sessions.get().cloned(),
        limiter: Some(limiter.clone()),
        ..Default::default()
    };
    let bus = nexus_events::bus::start(&options, services)?;
    let _ = state.bus.set(bus.stats.clone());
    let check = crate::health::rabbitmq(bus.stats, options.required);
    Ok((bus.events, Some(check)))
}

/// Events for version `version` now serving: each route programmed, each route gone since
/// `before` deleted, then the configuration applied; on the bus and as audit records. Never
/// waits (see `Events::publish`, `Audit::record`).
fn announce(nexus: &Nexus, before: &[CompiledRoute], config: &Config, version: u64) {
    let mut announced = Vec::new();
    let mut publish = |e: Event| announced.push(e);
    let same =
        |a: &CompiledRoute, b: &CompiledRoute| a.namespace == b.namespace && a.name == b.name;
    for r in &config.routes {
        publish(Event::route(
            RouteStage::Programmed,
            &r.namespace,
            &r.name,
            None,
        ));
    }
    for gone in before
        .iter()
        .filter(|r| !config.routes.iter().any(|n| same(r, n)))
    {
        publish(Event::route(
            RouteStage::Deleted,
            &gone.namespace,
            &gone.name,
            None,
        ));
    }
    let rules = config.routes.iter().map(|r| r.rules.len()).sum::<usize>();
    publish(Event::ConfigApplied(nexus_events::event::ConfigData {
        version,
        routes: u32::try_from(config.routes.len()).unwrap_or(u32::MAX),
        rules: u32::try_from(rules).unwrap_or(u32::MAX),
    }));
    if let Some(audit) = nexus.state.audit.get() {
        let records = announced
            .iter()
            .map(|e| crate::audit::config_record(e, "nexus-up"));
        audit.record(records.collect());
    }
    for e in announced {
        nexus.events.publish(e);
    }
}

/// Waits (up to 10 s) until `streams` cache event streams are open on the service.
async fn wait_for_cache_subscribers(state: &server::State, streams: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let live = state.cache.get().map_or(0, |c| {
            c.metrics
                .subscribers
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        if live >= u64::from(streams) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches every `cache.warm` path through Envoy, as a local client would (`Host` = the
/// listener), so the first caller finds it cached.
async fn warm(config: &Config) {
    if config.gateway.tls.is_some() {
        // The warmer speaks plain HTTP only; say so rather than count failures.
        tracing::info!("cache paths are not warmed on a TLS listener");
        return;
    }
    let mut addr = config.gateway.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let targets: Vec<crate::warm::Target> = config
        .routes
        .iter()
        .flat_map(|r| &r.rules)
        .filter_map(|rule| rule.cache.as_ref())
        .flat_map(|c| &c.warm)
        .map(|path| crate::warm::Target {
            host: config.gateway.listen.to_string(),
            path: path.clone(),
        })
        .collect();
    let ok = crate::warm::warm(addr, &targets).await;
    if ok < targets.len() {
        tracing::warn!("warmed {ok} of {} cache paths (see the log)", targets.len());
    }
}

/// What only a restart changes.
fn needs_restart(old: &GatewaySpec, new: &GatewaySpec) -> Option<&'static str> {
    if old.admin_port != new.admin_port {
        Some("adminPort")
    } else if old.http != new.http {
        Some("http")
    } else if old.concurrency != new.concurrency {
        Some("concurrency")
    } else {
        None
    }
}

/// The xDS files Envoy watches, written by atomic rename (Envoy reloads on a move into the
/// watched directory, never on an in-place edit, so it never reads half a file).
struct Xds {
    staging: PathBuf,
    lds: PathBuf,
    cds: PathBuf,
    /// In a directory of its own: Envoy re-reads it when a file is moved in there.
    sds: PathBuf,
}

impl Xds {
    fn new(state: &Path) -> Result<Self> {
        let watched = state.join("xds");
        std::fs::create_dir_all(&watched)?;
        let sds = state.join("sds");
        std::fs::create_dir_all(&sds)?;
        Ok(Self {
            staging: state.to_path_buf(),
            lds: watched.join("lds.json"),
            cds: watched.join("cds.json"),
            sds: sds.join("sds.json"),
        })
    }

    fn render(
        &self,
        config: &Config,
        upstreams: &Upstreams,
        services: &Services,
        modules: &BTreeMap<String, PathBuf>,
        version: u64,
    ) -> Result<envoy::Resources> {
        let routes: Vec<&CompiledRoute> = config.routes.iter().collect();
        let endpoints = Endpoints {
            upstreams: upstreams.addresses(&config.gateway),
            ratelimit: services.ratelimit,
            cache: services.cache,
            sessions: config.gateway.http,
            audit: services.audit,
            access_log: self.access_log(),
            sds: self.sds.clone(),
        };
        envoy::render(
            &routes,
            &config.gateway,
            &endpoints,
            modules,
            &version.to_string(),
        )
    }

    /// Envoy's access log (JSON lines), beside the xDS files.
    fn access_log(&self) -> PathBuf {
        self.staging.join("access.log")
    }

    fn write(&self, res: &envoy::Resources) -> Result<()> {
        // Secrets before the listener that names them.
        if let Some(secrets) = &res.secrets {
            self.write_one(&self.sds, secrets)?;
        }
        self.write_one(&self.cds, &res.clusters)?;
        self.write_one(&self.lds, &res.listeners)
    }

    fn write_one(&self, target: &Path, value: &serde_json::Value) -> Result<()> {
        let name = target.file_name().unwrap_or_default();
        let staged = self.staging.join(name);
        std::fs::write(&staged, serde_json::to_vec_pretty(value)?)?;
        std::fs::rename(&staged, target)?;
        Ok(())
    }
}

/// The Nexus services this process runs for Envoy.
struct Services {
    ratelimit: SocketAddr,
    cache: SocketAddr,
    /// The audit service (auth, rate-limit and guard decisions into `<state dir>/audit.log`).
    audit: SocketAddr,
}

/// 128 random bits, hex: the `POST /cache/invalidate` token when NEXUS_CACHE_TOKEN is unset.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Demo echo servers started so far, by Service name.
#[derive(Default)]
struct Upstreams {
    demo: BTreeMap<String, SocketAddr>,
}

impl Upstreams {
    /// Starts a demo upstream for every Service the routes use that `services` does not place.
    async fn ensure(&mut self, config: &Config) -> Result<()> {
        if !config.gateway.demo_upstreams {
            return Ok(());
        }
        for r in &config.routes {
            for t in r.upstreams().map(|u| &u.token) {
                if config.gateway.services.contains_key(t) || self.demo.contains_key(t) {
                    continue;
                }
                self.demo.insert(t.clone(), demo::start(t).await?);
            }
        }
        Ok(())
    }

    fn addresses(&self, gateway: &GatewaySpec) -> BTreeMap<String, Vec<(String, u16)>> {
        let mut out: BTreeMap<String, Vec<(String, u16)>> = self
            .demo
            .iter()
            .map(|(k, a)| (k.clone(), vec![(a.ip().to_string(), a.port())]))
            .collect();
        for (k, v) in &gateway.services {
            if let Some(hosts) = gateway::split_hosts(v) {
                out.insert(k.clone(), hosts);
            }
        }
        out
    }
}

enum TempOrKept {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl TempOrKept {
    fn path(&self) -> &Path {
        match self {
            TempOrKept::Temp(t) => t.path(),
            TempOrKept::Kept(p) => p,
        }
    }
}

/// Redis when asked for or reachable on its standard port; memory otherwise. The note says
/// which, for the banner and `/health/ready`.
async fn choose_storage(opts: &Options) -> (Option<String>, String) {
    if opts.memory {
        return (None, "in memory (this process only; --memory)".to_string());
    }
    if let Some(url) = &opts.redis_url {
        return (Some(url.clone()), format!("Redis at {url} (REDIS_URL)"));
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(("127.0.0.1", 6379)),
    )
    .await;
    if matches!(probe, Ok(Ok(_))) {
        let url = "redis://127.0.0.1:6379";
        (
            Some(url.to_string()),
            format!("Redis at {url} (found on its standard port)"),
        )
    } else {
        (
            None,
            "in memory (this process only: no REDIS_URL and nothing on 127.0.0.1:6379)".to_string(),
        )
    }
}

/// `ENVOY_BIN`, `envoy` on PATH, the one `cargo xtask setup` cached, or pip's script
/// directory; a clear error naming the install otherwise.
fn find_envoy() -> Result<PathBuf> {
    nexus_toolenv::envoy::locate()
}

fn ensure_free(what: &str, addr: SocketAddr) -> Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| {
            format!("{what} address {addr} is in use (set it in the NexusGateway or with a flag)")
        })
}

/// A loopback address for an internal service. The services bind later, in their own tasks,
/// so a port must not be handed out twice (the kernel may repeat a just-released one).
fn free_local_addr() -> Result<SocketAddr> {
    let port = nexus_toolenv::ports::free_port()?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn wait_ready(
    child: &mut tokio::process::Child,
    admin_path: &Path,
    log: &Path,
) -> Result<SocketAddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "envoy exited ({status}) before it was ready; its log:\n{}",
                tail(log)
            );
        }
        let admin = std::fs::read_to_string(admin_path)
            .ok()
            .and_then(|t| t.trim().parse::<SocketAddr>().ok());
        if let Some(admin) = admin {
            if matches!(admin_get(admin, "/ready").await, Ok((200, _))) {
                return Ok(admin);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("envoy was not ready within 60 s; its log:\n{}", tail(log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GET to Envoy's admin API.
async fn admin_get(admin: SocketAddr, path: &str) -> Result<(u16, String)> {
    crate::warm::get(admin, "admin", path).await
}

/// `(update_success, update_rejected)` of an xDS subscription.
async fn update_counts(admin: SocketAddr, prefix: &str) -> Result<(u64, u64)> {
    let (_, body) = admin_get(admin, &format!("/stats?filter=^{prefix}\\.update_")).await?;
    let stat = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{prefix}.{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((stat("update_success"), stat("update_rejected")))
}

async fn confirm(admin: SocketAddr, prefix: &str, before: (u64, u64)) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = update_counts(admin, prefix).await?;
        if now.1 > before.1 {
            bail!("Envoy rejected the {prefix} update (see the Envoy log for the reason)");
        }
        if now.0 > before.0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("Envoy did not take the {prefix} update within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn banner(
    config: &Config,
    dir: &Path,
    admin: SocketAddr,
    storage: &str,
    state: &Path,
    upstreams: &Upstreams,
) {
    let scheme = if config.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}", config.gateway.listen);
    println!(
        "Nexus is up: {url}  (Envoy admin http://{admin}, Nexus http://{}/health/ready)",
        config.gateway.http
    );
    println!("  rate-limit counters: {storage}");
    println!(
        "  Envoy config and logs (envoy.log, access.log): {}",
        state.display()
    );
    for (name, addr) in &upstreams.demo {
        println!("  demo upstream {name}: http://{addr}");
    }
    for r in &config.routes {
        for rule in &r.rules {
            println!(
                "  rule {:<24} -> {:<8} timeout {:>6}  retries {}",
                rule.name,
                rule.upstream.token,
                crate::model::duration_text(rule.timeout_ms),
                rule.retry.max_retries
            );
        }
    }
    if let Some(w) = &config.gateway.welcome {
        let dir_text = std::env::current_dir()
            .ok()
            .and_then(|cwd| dir.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| dir.to_path_buf());
        print!(
            "{}",
            w.replace("{url}", &url)
                .replace("{dir}", &dir_text.display().to_string())
        );
    }
}
