//! The Nexus cache-coherency service (`nexus.cache.v1.Cache`): a shared (L2) response cache on
//! Redis or memory, and the event stream every nexus-cache filter follows to drop its local
//! (L1) copies. See this crate's README for the Redis layout and the consistency model.
//!
//! - [`storage`]: where entries live, behind one trait: [`storage::MemoryStorage`] and
//!   [`storage::RedisStorage`] (last write wins, TTLs, tag index).
//! - [`bus`]: event fan-out to every replica's subscribers: [`bus::MemoryBus`] and
//!   [`bus::RedisBus`] (pub/sub, with a `Flush` whenever events may have been lost).
//! - [`service`]: validation, metrics and the tonic service over one storage and one bus.
//! - [`http`]: `POST /cache/invalidate` (bearer token), for operators and pipelines.
//! - [`server`]: building the service from a Redis URL (or none) and serving it.

pub mod bus;
pub mod http;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;

pub use service::{CacheService, Config};
