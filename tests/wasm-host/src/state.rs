//! Host-side state kept in the wasmtime `Store`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use wasmtime::{Memory, TypedFunc};

use crate::types::*;

/// A test-provided implementation of a foreign function (`proxy_call_foreign_function`).
pub type ForeignFunction = Box<dyn FnMut(&[u8]) -> Result<Vec<u8>, Status> + Send>;

/// Per-context stream data (root contexts have one too, always empty).
#[derive(Default)]
pub(crate) struct Stream {
    /// Request headers, request trailers, response headers, response trailers (map types 0..=3).
    pub maps: [HeaderMap; 4],
    /// Request body, response body (buffer types 0 and 1).
    pub bodies: [Vec<u8>; 2],
    /// Whether the last body callback paused (Envoy then buffers and the next chunk appends).
    pub buffering: [bool; 2],
    pub local_response: Option<LocalResponse>,
    pub continued: Vec<StreamType>,
    pub closed: Vec<StreamType>,
}

/// Data only available during a callout-response callback (map types 4..=7, buffers 4, 5).
#[derive(Default)]
pub(crate) struct CalloutData {
    pub grpc_initial_metadata: Option<HeaderMap>,
    pub grpc_trailing_metadata: Option<HeaderMap>,
    pub http_headers: Option<HeaderMap>,
    pub http_trailers: Option<HeaderMap>,
    pub http_body: Option<Vec<u8>>,
    pub grpc_message: Option<Vec<u8>>,
}

pub(crate) struct Metric {
    pub name: String,
    pub kind: MetricType,
    pub value: u64,
    pub samples: Vec<u64>,
}

pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

pub(crate) struct State {
    pub strict: bool,
    pub vm_id: String,
    pub log_level: LogLevel,
    pub allowed_clusters: HashSet<String>,
    pub foreign: HashMap<String, ForeignFunction>,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub time_nanos: u64,
    pub tick_period_ms: u32,
    pub rng: u64,

    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,

    /// Name of the callback currently running (`""` outside callbacks).
    pub callback: &'static str,
    pub current_ctx: u32,
    pub effective_ctx: u32,
    pub streams: HashMap<u32, Stream>,
    pub callout: CalloutData,

    pub logs: Vec<LogEntry>,
    pub stdout: Vec<u8>,
    pub hostcalls: Vec<&'static str>,
    pub violations: Vec<Violation>,
    pub shared_data: BTreeMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: Vec<Queue>,
    pub metrics: Vec<Metric>,
    pub http_calls: BTreeMap<u32, HttpCallout>,
    pub grpc_calls: BTreeMap<u32, GrpcCallout>,
    pub next_token: u32,
    pub status: (u32, String),
    pub done_calls: Vec<u32>,
}

impl State {
    pub fn stream(&mut self, ctx: u32) -> &mut Stream {
        self.streams.entry(ctx).or_default()
    }

    pub fn next_cas(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.next_cas
    }

    pub fn next_token(&mut self) -> u32 {
        self.next_token = self.next_token.wrapping_add(1).max(1);
        self.next_token
    }
}
