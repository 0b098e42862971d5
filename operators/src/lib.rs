//! Ward's operators: a typed config, pure logic over event batches and unit tests each.
//! No network or file I/O here: files an operator needs come through the engine's
//! `Resources`.

pub mod correlate;
pub mod dedup;
pub mod enrich;
pub mod normalize;
pub mod parse;
pub mod sigma;
pub mod sla;
pub mod suppress;
#[cfg(test)]
mod testing;
pub mod view;

use ward_engine::registry::Registry;

/// Registers every operator type.
pub fn register(registry: &mut Registry) {
    registry.register::<parse::ParseConfig>();
    registry.register::<normalize::NormalizeConfig>();
    registry.register::<enrich::EnrichConfig>();
    registry.register::<sigma::SigmaMatchConfig>();
    registry.register::<correlate::CorrelateConfig>();
    registry.register::<dedup::DedupConfig>();
    registry.register::<suppress::SuppressConfig>();
    registry.register::<sla::SlaConfig>();
    registry.register::<view::ViewConfig>();
}
