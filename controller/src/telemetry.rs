//! Prometheus metrics, without a metrics crate: a handful of counters and one histogram. Logs
//! are `nexus_telemetry`'s JSON lines, shared with every other Nexus process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use nexus_telemetry::new_trace_id;

pub const SERVICE: &str = "nexus-controller";

/// Installs the JSON log layer with `RUST_LOG`-style filtering (default `info`).
pub fn init_logging() {
    nexus_telemetry::init(SERVICE);
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
    /// Time spent planning (snapshot, conflicts, compiling changed routes), in µs.
    pub plan_micros: AtomicU64,
    /// Time spent rendering group objects, in µs.
    pub render_micros: AtomicU64,
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
        let secs = |s: &mut String, name: &str, help: &str, micros: &AtomicU64| {
            let v = micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        secs(
            &mut s,
            "nexus_controller_plan_seconds_total",
            "Time reconciles spent planning (conflicts, compiling changed routes).",
            &self.plan_micros,
        );
        secs(
            &mut s,
            "nexus_controller_render_seconds_total",
            "Time spent rendering group objects.",
            &self.render_micros,
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
