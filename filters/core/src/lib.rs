//! What every Nexus filter is made of, without proxy-wasm.
//!
//! Filter logic talks to its host only through the small traits in [`host`]; the proxy-wasm
//! adapter (`nexus-proxy-wasm`) implements them with hostcalls, and [`testing`] implements them
//! in memory for native unit tests. A filter decides every request with an [`Action`]: go on,
//! or answer locally with a [`LocalResponse`] (a JSON error body for every refusal).

pub mod audit;
pub mod fasthash;
pub mod feed;
pub mod headers;
pub mod host;
pub mod matcher;
pub mod report;
pub mod request_log;
pub mod response;
pub mod testing;
pub mod text;

pub use headers::HeaderList;
pub use host::{Callouts, Clock, HeaderMap, Level, Log, Metrics, SharedData};
pub use response::{Action, LocalResponse};

/// A small, fast, non-cryptographic generator for ids (request ids, trace ids).
///
/// `wasm32-unknown-unknown` has no entropy source and the proxy-wasm ABI offers none, so each
/// VM seeds one from the host clock and its context id; ids only need to be unique, not secret.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// SplitMix64: every seed gives a full-period sequence of well-mixed values.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
