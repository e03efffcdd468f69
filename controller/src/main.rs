//! `nexus`: the Nexus controller and its offline tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nexus_controller::policy::{AllowedRoutes, WatchScope};
use nexus_controller::render::Settings;
use nexus_controller::{
    chart, controller, crd, enforcement, health, input, leader, plan, server, telemetry,
};

#[derive(Parser)]
#[command(
    name = "nexus",
    about = "Nexus API gateway controller and tools",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct RenderArgs {
    /// Directory with `<filter>.wasm.sha256` (and, for the controller, the `.wasm` files).
    #[arg(long, default_value = "target/filters", env = "NEXUS_MODULES")]
    modules: PathBuf,
    /// Namespace of the `nexus-controller` Service serving the modules.
    #[arg(long, default_value = "nexus-system", env = "POD_NAMESPACE")]
    controller_namespace: String,
    /// Port of the module server in that Service.
    #[arg(long, default_value_t = 8082)]
    module_port: u16,
    /// Which route namespaces may attach filters to the gateways of a namespace:
    /// `GATEWAY_NAMESPACE=All|Same|ns1,ns2`, repeatable. Unlisted namespaces allow `Same`,
    /// except istio-system (Istio's shared ingress gateway), which allows `All`.
    #[arg(long = "allowed-routes", value_name = "NS=FROM")]
    allowed_routes: Vec<String>,
    /// Watch routes (and write their objects) only in these namespaces (comma-separated or
    /// repeated; the chart's `watchNamespaces`, which grants Roles there instead of a
    /// ClusterRole). Empty: the whole cluster.
    #[arg(
        long = "watch-namespaces",
        env = "NEXUS_WATCH_NAMESPACES",
        value_name = "NS,NS"
    )]
    watch_namespaces: Vec<String>,
    /// With --watch-namespaces: namespaces where gateways run, where the controller writes
    /// gateway EnvoyFilters and touches nothing else (no Secrets, no routes).
    #[arg(
        long = "gateway-namespaces",
        default_value = "istio-system",
        value_name = "NS,NS"
    )]
    gateway_namespaces: Vec<String>,
    /// How often every filter reports what it runs (the `Enforced` condition forgets a proxy
    /// silent for three intervals).
    #[arg(long, default_value_t = nexus_config::report::DEFAULT_INTERVAL_MS, value_name = "MS")]
    proxy_report_interval_ms: u32,
    /// Gateways stream their access log (`envoy.access_loggers.http_grpc`) to the controller
    /// on this port of its Service, which the controller serves on every replica: the request
    /// metrics (`request_duration_seconds`, `error_rate_total`, cache hits) on `/metrics`.
    #[arg(long, value_name = "PORT")]
    access_log_port: Option<u16>,
    /// Filters send their audit records (auth, rate-limit and guard decisions) to the
    /// controller on this port of its Service; every replica serves it and appends to one
    /// hash-chained log in Redis (`--redis-url`, `--audit-stream`).
    #[arg(long, value_name = "PORT")]
    audit_port: Option<u16>,
    /// What proxies do while the audit service does not take records: `buffer`, `drop`, or
    /// `refuse` (nexus-guard fails closed; auth and ratelimit buffer).
    #[arg(long, default_value = "buffer", value_parser = ["buffer", "drop", "refuse"])]
    audit_on_unavailable: String,
}

/// The event bus (RabbitMQ): `service.events` and `service.commands`.
#[derive(clap::Args, Clone)]
struct BusArgs {
    /// Publish events on `service.events` and take commands from `service.commands` on this
    /// RabbitMQ (`amqp://user:password@host:5672/%2f`); no event bus without it.
    #[arg(long, env = "NEXUS_AMQP_URL")]
    amqp_url: Option<String>,
    /// Whether a RabbitMQ outage fails /health/ready (the Datapunk design: it does).
    #[arg(long, env = "NEXUS_AMQP_REQUIRED", default_value_t = true, action = clap::ArgAction::Set)]
    amqp_required: bool,
    /// Names this deployment's command queue (`nexus.commands.<name>`) and event outbox.
    #[arg(long, env = "NEXUS_DEPLOYMENT", default_value = "nexus")]
    deployment: String,
    /// Events kept while RabbitMQ is down (in Redis when there is one); more are dropped and
    /// counted in health and metrics.
    #[arg(long, default_value_t = 100_000)]
    events_outbox_capacity: usize,
    /// How often the rate-limit service's refusals go out as `nexus.ratelimit.over_limit.<rule>`
    /// summaries (one per rule and client refused in the interval, with the count).
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    events_over_limit_interval_ms: u64,
}

impl BusArgs {
    fn options(
        &self,
        replica: &str,
        redis_url: Option<String>,
    ) -> Option<nexus_events::bus::BusOptions> {
        Some(nexus_events::bus::BusOptions {
            amqp_url: self.amqp_url.clone().filter(|u| !u.is_empty())?,
            deployment: self.deployment.clone(),
            replica: replica.to_string(),
            redis_url,
            outbox_capacity: self.events_outbox_capacity,
            consume_commands: true,
            required: self.amqp_required,
            over_limit_interval: Duration::from_millis(self.events_over_limit_interval_ms.max(1)),
        })
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup; boxing buys nothing
enum Command {
    /// Print the CRDs (YAML).
    Crd,
    /// Print the JSON Schema of the Helm chart's values (charts/nexus/values.schema.json).
    ChartSchema,
    /// Print every object the controller would apply for these files (NexusRoutes and Secrets).
    Render {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        render: RenderArgs,
    },
    /// Check NexusRoutes; print every problem with file and JSON path; exit 1 if any.
    Validate {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Run Nexus without a cluster: NexusRoutes (and Secrets, a NexusGateway) from DIR, real
    /// Envoy with the filters, the Nexus services in-process; edits to DIR apply live.
    Up(UpArgs),
    /// The audit log's tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the controller (leader-elected), health/metrics and the module server.
    Controller(ControllerArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Directory of YAML files (e.g. examples/datapunk).
    dir: PathBuf,
    /// Directory with the built filters (`nexus_<filter>.wasm`).
    #[arg(long, default_value = "target/filters", env = "NEXUS_MODULES")]
    modules: PathBuf,
    /// Envoy's listener (overrides the NexusGateway's `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Envoy's admin port on 127.0.0.1 (0: any free port).
    #[arg(long)]
    admin_port: Option<u16>,
    /// Nexus's health/metrics/modules server.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Rate-limit counters in this Redis (else 127.0.0.1:6379 if it answers, else memory):
    /// `redis://host:6379`, or a Redis Cluster as `redis+cluster://host1:port1,host2:port2`.
    #[arg(long, env = "REDIS_URL", conflicts_with = "memory")]
    redis_url: Option<String>,
    /// Keep counters in memory even if Redis is available.
    #[arg(long)]
    memory: bool,
    /// Keep Envoy's bootstrap, xDS files and log here (default: a temp dir, removed on exit).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How often DIR is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 300)]
    poll_ms: u64,
    /// How often health components (Envoy, Redis) are checked, in milliseconds; each check
    /// has 3 s and a component is down after 3 failures in a row.
    #[arg(long, default_value_t = 5000)]
    health_interval_ms: u64,
    /// The level of the filters' lines in Envoy's log (Envoy's `wasm` logger). `debug` adds
    /// one line per request and filter, with its `correlation_id` and `trace_id`.
    #[arg(long, default_value = "info", value_parser = ["trace", "debug", "info", "warning", "error", "off"])]
    filter_log_level: String,
    #[command(flatten)]
    bus: BusArgs,
}

#[derive(clap::Args)]
struct ControllerArgs {
    #[command(flatten)]
    render: RenderArgs,
    /// Health, metrics (and modules) listen here.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Module server (EnvoyFilters fetch `/modules/<sha256>.wasm` here).
    #[arg(long, default_value = "0.0.0.0:8082")]
    modules_addr: SocketAddr,
    #[arg(long, default_value = "nexus-controller")]
    lease_name: String,
    /// Namespace of the Lease (defaults to --controller-namespace).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (defaults to POD_NAME, else host-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds between renewals (and acquisition attempts).
    #[arg(long, default_value_t = 5)]
    renew_interval: u64,
    /// Serve the rate-limit service (envoy.service.ratelimit.v3) here, on every replica,
    /// with the limits of the rendered rate-limit ConfigMaps.
    #[arg(long)]
    ratelimit_addr: Option<SocketAddr>,
    /// Serve the cache-coherency service (nexus.cache.v1, conventionally on port 8083)
    /// here, on every replica; `POST /cache/invalidate` is then served on --http-addr,
    /// with the bearer token in NEXUS_CACHE_TOKEN.
    #[arg(long)]
    cache_addr: Option<SocketAddr>,
    /// Rate-limit counters and cache entries in Redis (shared by replicas); in memory
    /// without it. `redis://host:6379`, or a Redis Cluster as
    /// `redis+cluster://host1:port1,host2:port2`.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// With --audit-port: the Redis stream holding the audit chain.
    #[arg(long, default_value = nexus_controller::audit::mirror::STREAM)]
    audit_stream: String,
    /// The leader fetches routes' `cache.warm` paths through this gateway (e.g.
    /// `http://istio-ingressgateway.istio-system`) after they are programmed and every 20 s.
    #[arg(long, env = "NEXUS_WARM_URL")]
    warm_url: Option<String>,
    /// Take a proxy report's sender identity from `x-forwarded-client-cert`: only when this
    /// replica runs with an Istio sidecar, which replaces what clients send (the chart sets
    /// it when `controller.sidecar` is on). Otherwise a report counts only when it comes
    /// from the reporting pod's own IP.
    #[arg(long, env = "NEXUS_TRUST_XFCC")]
    trust_xfcc: bool,
    #[command(flatten)]
    bus: BusArgs,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check a hash-chained audit log end to end (a file, or with --redis the controller's
    /// chain in a Redis stream); exit 1 naming the first broken record.
    Verify {
        #[arg(required_unless_present = "redis")]
        file: Option<PathBuf>,
        /// Check the chain in this Redis (`redis://host:6379`) instead of a file.
        #[arg(long, conflicts_with = "file")]
        redis: Option<String>,
        /// With --redis: the stream holding the chain.
        #[arg(long, default_value = nexus_controller::audit::mirror::STREAM)]
        stream: String,
        /// The head hash the log must end at (as the service last reported it): also catches
        /// records cut off the end.
        #[arg(long)]
        head: Option<String>,
    },
}

fn settings(r: &RenderArgs) -> anyhow::Result<Settings> {
    Ok(Settings {
        controller_namespace: r.controller_namespace.clone(),
        module_port: r.module_port,
        modules: Settings::load_modules(&r.modules)?,
        allowed_routes: AllowedRoutes::parse(&r.allowed_routes)
            .map_err(anyhow::Error::msg)?
            .within(WatchScope::parse(
                &r.watch_namespaces,
                &r.gateway_namespaces,
            )),
        report_interval_ms: r.proxy_report_interval_ms,
        access_log_port: r.access_log_port,
        audit_port: r.audit_port,
        audit_on_unavailable: serde_json::from_value(serde_json::Value::String(
            r.audit_on_unavailable.clone(),
        ))?,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // `up` and `controller` log JSON lines; the CLI commands print plain text.
            if tracing::dispatcher::has_been_set() {
                tracing::error!("{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::ChartSchema => {
            print!("{}", chart::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { files, render } => render_files(&files, &render),
        Command::Validate { files } => validate_files(&files),
        Command::Up(args) => up(args),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    redis,
                    stream,
                    head,
                },
        } => match verify_audit(file, redis, &stream, head.as_deref()) {
            Ok(report) => {
                println!("{report}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Controller(args) => controller(args),
    }
}

/// `nexus audit verify`: a file, or the chain in a Redis stream.
fn verify_audit(
    file: Option<PathBuf>,
    redis: Option<String>,
    stream: &str,
    head: Option<&str>,
) -> anyhow::Result<String> {
    match (file, redis) {
        (Some(file), _) => nexus_controller::audit::verify_file(&file, head),
        (None, Some(url)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(nexus_controller::audit::verify_stream(&url, stream, head)),
        (None, None) => anyhow::bail!("name a file or --redis"),
    }
}

/// `nexus render`: every object the controller would apply, as YAML; exit 1 on a problem.
fn render_files(files: &[PathBuf], render: &RenderArgs) -> anyhow::Result<ExitCode> {
    let settings = settings(render)?;
    let inputs = input::read_files(files)?;
    let routes: Vec<&crd::NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let (objects, outcomes) = plan::render_all(&routes, &inputs.secrets, &settings)?;
    for o in &objects {
        print!("---\n{}", serde_yaml::to_string(o)?);
    }
    Ok(exit_code(report(&inputs, &outcomes)))
}

/// `nexus validate`: every problem with file and JSON path; exit 1 if any.
fn validate_files(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let inputs = input::read_files(files)?;
    let routes: Vec<&crd::NexusRoute> = inputs.routes.iter().map(|(_, r)| r).collect();
    let outcomes = plan::outcomes(&routes, &inputs.secrets, &AllowedRoutes::default());
    let problems = report(&inputs, &outcomes);
    if problems == 0 {
        eprintln!("{} NexusRoute(s) valid", routes.len());
    }
    Ok(exit_code(problems))
}

fn exit_code(problems: usize) -> ExitCode {
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `nexus up`.
fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    use nexus_controller::standalone::run;
    // `up` puts the outbox where it puts the counters (it picks the Redis).
    let bus = args
        .bus
        .options(&format!("up-{}", std::process::id()), None);
    nexus_telemetry::init(run::SERVICE);
    let options = run::Options {
        dir: args.dir,
        modules: args.modules,
        listen: args.listen,
        admin_port: args.admin_port,
        http: args.http,
        redis_url: args.redis_url,
        memory: args.memory,
        state_dir: args.state_dir,
        poll: Duration::from_millis(args.poll_ms.max(50)),
        health: health::Schedule {
            interval: Duration::from_millis(args.health_interval_ms.max(50)),
            ..Default::default()
        },
        filter_log_level: args.filter_log_level,
        bus,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run::up(options))
}

/// The audit service of `--audit-port`: where it listens, and the Redis stream of its chain.
struct AuditOptions {
    addr: SocketAddr,
    redis_url: String,
    stream: String,
}

/// Serves the audit service on this replica; every replica appends to the one chain.
async fn start_audit(options: AuditOptions, state: &server::State) -> anyhow::Result<()> {
    let (addr, audit) =
        nexus_controller::audit::start_in_redis(options.addr, &options.redis_url, &options.stream)
            .await?;
    tracing::info!(%addr, stream = %options.stream, "serving the audit service");
    let detail = format!("on {addr}, chained in the Redis stream {}", options.stream);
    state.set("audit", true, detail);
    let _ = state.audit.set(audit);
    Ok(())
}

/// `nexus controller`.
fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging();
    let settings = settings(&args.render)?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "nexus".to_string());
        format!("{host}-{}", std::process::id())
    });
    let lease = leader::LeaseConfig {
        namespace: (args.lease_namespace.clone())
            .unwrap_or_else(|| args.render.controller_namespace.clone()),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_interval: Duration::from_secs(args.renew_interval),
    };
    let cache = args
        .cache_addr
        .map(|addr| nexus_controller::cache::Options {
            addr,
            redis_url: args.redis_url.clone(),
            token: None,
            replica: identity.clone(),
        });
    let bus = args.bus.options(&identity, args.redis_url.clone());
    let ratelimit = args
        .ratelimit_addr
        .map(|addr| (addr, args.redis_url.clone()));
    let audit = match (settings.audit_port, &args.redis_url) {
        (None, _) => None,
        (Some(port), Some(redis_url)) => Some(AuditOptions {
            addr: SocketAddr::from(([0, 0, 0, 0], port)),
            redis_url: redis_url.clone(),
            stream: args.audit_stream.clone(),
        }),
        (Some(_), None) => {
            anyhow::bail!("--audit-port needs --redis-url: the audit chain lives in Redis")
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_controller(
        settings,
        args.render.modules,
        args.http_addr,
        args.modules_addr,
        lease,
        identity,
        ratelimit,
        cache,
        audit,
        args.warm_url,
        bus,
        args.trust_xfcc,
    ))
}

/// The event bus when `--amqp-url` is set (a disabled handle otherwise), with its health check;
/// commands act on this replica's cache and rate-limit services.
fn start_bus(
    bus: Option<nexus_events::bus::BusOptions>,
    state: &server::State,
    checks: &mut Vec<health::Check>,
    limiter: Option<nexus_ratelimit_service::server::SharedLimiter>,
    reconcile: nexus_events::services::Reconcile,
) -> anyhow::Result<nexus_events::Events> {
    let Some(options) = bus else {
        state.set_component("rabbitmq", server::Component::disabled("no --amqp-url"));
        return Ok(nexus_events::Events::disabled());
    };
    let services = nexus_events::services::Services {
        cache: state.cache.get().cloned(),
        sessions: state.sessions.get().cloned(),
        limiter,
        reconcile: Some(reconcile),
        ..Default::default()
    };
    let started = nexus_events::bus::start(&options, services)?;
    let _ = state.bus.set(started.stats.clone());
    checks.push(health::rabbitmq(started.stats, options.required));
    Ok(started.events)
}

/// Prints every problem (file, route, JSON path, message) to stderr; returns how many.
fn report(
    inputs: &input::Inputs,
    outcomes: &std::collections::BTreeMap<
        plan::RouteId,
        Result<nexus_controller::model::CompiledRoute, Vec<nexus_controller::model::Problem>>,
    >,
) -> usize {
    let mut n = 0;
    for (file, e) in &inputs.errors {
        eprintln!("{}: {e}", file.display());
        n += 1;
    }
    for (file, r) in &inputs.routes {
        let id = plan::id(r);
        if let Some(Err(problems)) = outcomes.get(&id) {
            for p in problems {
                eprintln!(
                    "{}: NexusRoute {}/{}: {} ({}): {}",
                    file.display(),
                    id.0,
                    id.1,
                    p.path,
                    p.reason.as_str(),
                    p.message
                );
                n += 1;
            }
        }
    }
    n
}

#[allow(clippy::too_many_arguments)] // one per hosted service; each is optional
async fn run_controller(
    settings: Settings,
    modules_dir: PathBuf,
    http_addr: SocketAddr,
    modules_addr: SocketAddr,
    lease: leader::LeaseConfig,
    identity: String,
    ratelimit: Option<(SocketAddr, Option<String>)>,
    cache: Option<nexus_controller::cache::Options>,
    audit: Option<AuditOptions>,
    warm_url: Option<String>,
    bus: Option<nexus_events::bus::BusOptions>,
    trust_xfcc: bool,
) -> anyhow::Result<ExitCode> {
    let state = Arc::new(server::State::new(Some(modules_dir)));
    state.trust_xfcc.store(trust_xfcc, Ordering::Relaxed);
    state.set("apiserver", false, "connecting");
    state.set("leader", true, "standby");
    tokio::spawn(server::serve(http_addr, state.clone()));
    if modules_addr != http_addr {
        tokio::spawn(server::serve(modules_addr, state.clone()));
    }
    let client = kube::Client::try_default().await?;
    // In a pod, proxies' reports reach only the leader (see nexus_controller::enforcement).
    let own_pod = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty());
    if let Some(pod) = &own_pod {
        enforcement::leader_label(&client, &settings.controller_namespace, pod, false).await;
    }
    let mut checks = vec![apiserver_check(client.clone())];
    state.set_component(
        "ratelimit",
        server::Component::disabled("no --ratelimit-addr"),
    );
    state.set_component("redis", server::Component::disabled("no --ratelimit-addr"));
    let mut bus_limiter = None;
    if let Some((addr, redis_url)) = ratelimit {
        let limiter = nexus_ratelimit_service::server::SharedLimiter::new(
            nexus_ratelimit_service::Limits::default(),
            redis_url.as_deref(),
            nexus_ratelimit_service::Algorithm::FixedWindow,
            nexus_ratelimit_service::UnknownDomain::Allow,
            Duration::from_millis(100),
        )?;
        tracing::info!(%addr, storage = %limiter.describe(), "serving the rate-limit service");
        let detail = format!("on {addr}, counters: {}", limiter.describe());
        state.set("ratelimit", true, detail);
        // Optional here, unlike the Datapunk design's list: readiness also gates this replica's
        // module server, and the filters already fall back to local limits while the service
        // answers UNAVAILABLE; a Redis outage must not take every replica out of the Service.
        match health::redis(&limiter, false) {
            Some(check) => checks.push(check),
            None => state.set_component("redis", server::Component::disabled("counters in memory")),
        }
        bus_limiter = Some(limiter.clone());
        tokio::spawn(nexus_controller::ratelimit::follow_configmaps(
            client.clone(),
            settings.controller_namespace.clone(),
            limiter.clone(),
        ));
        tokio::spawn(async move {
            if let Err(e) = limiter.serve(addr, std::future::pending()).await {
                tracing::error!(error = %e, "rate-limit service stopped");
            }
        });
    }
    if let Some(options) = cache {
        nexus_controller::cache::start(options, &state).await?;
    }
    if let Some(port) = settings.access_log_port {
        let metrics = state.requests.get_or_init(Default::default).clone();
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        tracing::info!(%addr, "serving the access log service (request metrics)");
        tokio::spawn(async move {
            if let Err(e) = nexus_controller::access_log_service::serve(addr, metrics).await {
                tracing::error!(error = %e, "access log service stopped");
            }
        });
    }
    if let Some(options) = audit {
        start_audit(options, &state).await?;
    }
    if let Some(sessions) = state.sessions.get() {
        tokio::spawn(nexus_controller::sessions::follow_providers(
            client.clone(),
            settings.allowed_routes.scope.clone(),
            sessions.clone(),
        ));
    }
    // Every replica serves commands; the leader's reconciler publishes route events.
    let leader = state.clone();
    let (reconcile, commands) =
        controller::reconcile_commands(Arc::new(move || leader.is_leader.load(Ordering::Relaxed)));
    let events = start_bus(bus, &state, &mut checks, bus_limiter, reconcile)?;
    health::spawn(state.clone(), checks, health::Schedule::default());
    state.started.store(true, Ordering::Relaxed);
    tracing::info!(identity = %identity, lease = %lease.name, "starting; waiting for leadership");

    let lease_api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &lease.namespace);
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(leader::run(lease_api.clone(), lease.clone(), tx));
    // Wait for leadership (or a signal).
    loop {
        if *rx.borrow() {
            break;
        }
        tokio::select! {
            r = rx.changed() => { if r.is_err() { anyhow::bail!("leader election stopped"); } }
            _ = tokio::signal::ctrl_c() => { return Ok(ExitCode::SUCCESS); }
        }
    }
    state.is_leader.store(true, Ordering::Relaxed);
    state
        .metrics
        .leader_transitions
        .fetch_add(1, Ordering::Relaxed);
    state.set("leader", true, format!("leader ({identity})"));
    if let Some(pod) = &own_pod {
        enforcement::leader_label(&client, &settings.controller_namespace, pod, true).await;
    }
    let scope = settings.allowed_routes.scope.clone();
    let ctrl = tokio::spawn(controller::run(
        client.clone(),
        settings,
        state.clone(),
        identity,
        events,
        commands,
    ));
    if let Some(url) = warm_url {
        tokio::spawn(nexus_controller::warm::follow(client.clone(), scope, url));
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = async { while *rx.borrow() { if rx.changed().await.is_err() { break; } } } => {
            tracing::error!("lost leadership: exiting so a restart starts clean");
            ctrl.abort();
            Ok(ExitCode::FAILURE)
        }
        _ = tokio::signal::ctrl_c() => { shutdown(ctrl, elector, &lease_api, &lease).await }
        _ = sigterm.recv() => { shutdown(ctrl, elector, &lease_api, &lease).await }
    }
}

/// The `apiserver` health component from `GET /version`.
fn apiserver_check(client: kube::Client) -> health::Check {
    health::Check::new("apiserver", true, move || {
        let client = client.clone();
        async move {
            client
                .apiserver_version()
                .await
                .map(|v| format!("apiserver {}.{}", v.major, v.minor))
                .map_err(|e| e.to_string())
        }
    })
}

async fn shutdown(
    ctrl: tokio::task::JoinHandle<anyhow::Result<()>>,
    elector: tokio::task::JoinHandle<()>,
    api: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    lease: &leader::LeaseConfig,
) -> anyhow::Result<ExitCode> {
    tracing::info!("shutting down: releasing the lease");
    ctrl.abort();
    elector.abort();
    leader::release(api, lease).await;
    Ok(ExitCode::SUCCESS)
}
