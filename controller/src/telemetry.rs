//! JSON logs (`timestamp`, `level`, `service`, `trace_id`, `message`, fields) and Prometheus
//! metrics, without a metrics crate: a handful of counters and one histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

pub const SERVICE: &str = "nexus-controller";

/// A random 128-bit trace id, hex (W3C trace-context format).
pub fn new_trace_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(32);
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

struct TraceId(String);

#[derive(Default)]
struct Fields(BTreeMap<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            serde_json::Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(
            field.name().to_string(),
            serde_json::Value::String(value.to_string()),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

/// Writes one JSON object per event to stderr. A span field `trace_id` becomes the
/// `trace_id` of every event inside it.
pub struct JsonLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for JsonLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let (Some(serde_json::Value::String(t)), Some(span)) =
            (f.0.get("trace_id"), ctx.span(id))
        {
            span.extensions_mut().insert(TraceId(t.clone()));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let mut trace_id = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(t) = span.extensions().get::<TraceId>() {
                    trace_id = Some(t.0.clone());
                    break;
                }
            }
        }
        let mut obj = serde_json::Map::new();
        obj.insert(
            "timestamp".into(),
            k8s_openapi::jiff::Timestamp::now().to_string().into(),
        );
        obj.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        obj.insert("service".into(), SERVICE.into());
        obj.insert(
            "trace_id".into(),
            trace_id.map(Into::into).unwrap_or(serde_json::Value::Null),
        );
        obj.insert("target".into(), event.metadata().target().into());
        if let Some(m) = f.0.remove("message") {
            obj.insert("message".into(), m);
        }
        for (k, v) in f.0 {
            obj.insert(k, v);
        }
        let line = serde_json::Value::Object(obj).to_string();
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// Installs the JSON log layer with `RUST_LOG`-style filtering (default `info`).
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_runtime=warn,kube_client=warn")
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(JsonLayer)
        .try_init();
}

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub applies: AtomicU64,
    pub leader_transitions: AtomicU64,
    durations: Mutex<([u64; BUCKETS.len()], u64, f64)>,
}

impl Metrics {
    pub fn observe_reconcile(&self, seconds: f64, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut d) = self.durations.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    d.0[i] += 1;
                }
            }
            d.1 += 1;
            d.2 += seconds;
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self, is_leader: bool) -> String {
        let mut s = String::new();
        let c = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        c(
            &mut s,
            "nexus_controller_reconciles_total",
            "Reconciles run.",
            self.reconciles.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "nexus_controller_reconcile_errors_total",
            "Reconciles that failed.",
            self.reconcile_errors.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "nexus_controller_applies_total",
            "Objects applied with server-side apply.",
            self.applies.load(Ordering::Relaxed),
        );
        c(
            &mut s,
            "nexus_controller_leader_transitions_total",
            "Times this replica became leader.",
            self.leader_transitions.load(Ordering::Relaxed),
        );
        let _ = writeln!(s, "# HELP nexus_controller_leader 1 if this replica holds the Lease.\n# TYPE nexus_controller_leader gauge\nnexus_controller_leader {}", u8::from(is_leader));
        let name = "nexus_controller_reconcile_duration_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Reconcile duration.\n# TYPE {name} histogram"
        );
        if let Ok(d) = self.durations.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {}", d.0[i]);
            }
            let _ = writeln!(
                s,
                "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
                d.1, d.2, d.1
            );
        }
        s
    }
}
