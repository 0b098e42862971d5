//! Ward's runtime core: event batches, pipeline specs and their validation, the component
//! registry, the planner that turns a spec into a timely dataflow, metrics and the admin
//! endpoint. Operators and connectors depend on this crate, never the other way round.

pub mod admin;
pub mod alert;
pub mod batch;
pub mod case;
pub mod checkpoint;
pub mod clock;
pub mod coalesce;
pub mod component;
pub mod contexts;
mod dataflow;
pub mod fields;
pub mod framing;
pub mod interpolate;
pub mod key_groups;
pub mod keyed;
pub mod limits;
pub mod metrics;
pub mod quarantine;
pub mod registry;
pub mod reload;
pub mod resources;
pub mod runtime;
pub mod spec;
pub mod storage;
pub mod switch;
pub mod text;
pub mod time;
pub mod view;

pub use anyhow;
pub use marked_yaml;
pub use schemars;
