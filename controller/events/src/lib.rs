//! The Nexus event bus on RabbitMQ.
//!
//! - [`Events`]: the handle the rest of Nexus publishes through. `publish(event)` never waits
//!   and never fails; a background task publishes on `service.events` (topic, durable,
//!   persistent, publisher confirms) in order, and keeps what RabbitMQ cannot take yet in a
//!   bounded [`outbox`] (Redis, or memory) that it drains, in order, when RabbitMQ is back.
//! - [`consumer`]: `service.commands` (direct) → a [`Handler`]; [`services::Services`] is the
//!   handler over the cache and rate-limit services.
//! - [`envelope`], [`event`], [`command`]: the wire format (CloudEvents attribute names, JSON
//!   Schemas generated in [`schema`]).
//! - [`Stats`]: counters for `/metrics` and the `rabbitmq` health check.
//!
//! For the reconciler: keep an [`Events`] (cheap to clone) and call
//! `events.publish(Event::route(RouteStage::Programmed, ns, name, Some(generation)))`, or
//! `Event::route_rejected(ns, name, generation, reason)`; a disabled handle (no bus
//! configured) accepts the same calls and drops them.

pub mod bus;
pub mod command;
pub mod consumer;
pub mod envelope;
pub mod event;
pub mod outbox;
pub mod over_limit;
pub mod publisher;
pub mod schema;
pub mod services;
pub mod stats;

pub use command::{Command, Handler, HandlerError};
pub use envelope::Envelope;
pub use event::{Event, RouteStage};
pub use publisher::{Events, PublisherConfig};
pub use stats::Stats;
