//! The component registry: every source, operator and sink type a spec may name, with its
//! config type. The binary fills it from the operator and connector crates, so the engine
//! stays independent of them (dependencies point one way: components depend on the engine).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use std::sync::Arc;

use crate::component::StreamKind;
use crate::resources::Resources;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Source,
    Operator,
    Sink,
}

impl Section {
    pub fn key(self) -> &'static str {
        match self {
            Section::Source => "sources",
            Section::Operator => "operators",
            Section::Sink => "sinks",
        }
    }
}

/// A component with a validated config, ready to be instantiated per worker.
#[derive(Clone)]
pub enum Built {
    Source(Arc<dyn crate::component::SourceFactory>),
    Operator(Arc<dyn crate::component::OperatorFactory>),
    Sink(Arc<dyn crate::component::SinkFactory>),
    /// A stateful operator: keyed state exchanged by key group, driven by event time.
    Keyed(Arc<dyn crate::keyed::KeyedOperatorFactory>),
    /// A view: keyed state feeding differential-dataflow (see [`crate::view`]).
    View(Arc<dyn crate::view::ViewFactory>),
}

/// What a config's `build` may use.
pub struct BuildContext<'a> {
    pub component_id: &'a str,
    pub resources: &'a Resources,
    /// Where a component registers its admin endpoint routes.
    pub admin: &'a crate::admin::AdminRoutes,
    /// Where a reloadable component registers its versions, so checkpoints keep them.
    pub contexts: &'a crate::contexts::Contexts,
    /// The files a component reads and writes, declared while it is built, so validation can
    /// refuse a sink that would truncate a source's input or two sinks writing one file.
    pub io: &'a std::cell::RefCell<Vec<FileUse>>,
    /// Alert fields that components downstream of this one read (suppress keys, the SLA
    /// entity...): a detector copies them into every alert it raises, so they are there even
    /// when the alert does not carry its event.
    pub downstream_alert_keys: &'a [AlertKey],
    /// `settings.storage`: how components reach object-store locations.
    pub storage: &'a crate::storage::StorageOptions,
}

/// An alert field a component reads (its [`ComponentConfig::alert_keys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertKey {
    /// The component that reads it.
    pub reader: String,
    pub field: String,
}

/// A file or directory a component reads or writes.
#[derive(Clone, Debug)]
pub struct FileUse {
    pub component: String,
    pub path: std::path::PathBuf,
    pub write: bool,
    /// A directory the component writes files under (a Parquet sink), not one file.
    pub dir: bool,
}

impl BuildContext<'_> {
    pub fn reads(&self, path: &std::path::Path) {
        self.declare(path, false, false);
    }
    pub fn writes(&self, path: &std::path::Path) {
        self.declare(path, true, false);
    }
    pub fn writes_under(&self, dir: &std::path::Path) {
        self.declare(dir, true, true);
    }
    fn declare(&self, path: &std::path::Path, write: bool, dir: bool) {
        self.io.borrow_mut().push(FileUse {
            component: self.component_id.to_string(),
            path: path.to_path_buf(),
            write,
            dir,
        });
    }
}

/// A typed component config. Implemented by every component in its own file.
pub trait ComponentConfig: DeserializeOwned + JsonSchema + Sized + 'static {
    const TYPE: &'static str;
    const SECTION: Section;
    /// One line for `--help`-style listings and the JSON Schema.
    const DESCRIPTION: &'static str;
    /// Stream kinds the component reads (empty for sources).
    const ACCEPTS: &'static [StreamKind];
    /// Stream kind of the default output (None for sinks).
    const OUTPUT: Option<StreamKind>;

    /// Checks the config beyond its shape (files exist, patterns compile) and prepares the
    /// per-worker factory. Errors are reported at the component's position in the spec.
    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built>;

    /// Alert fields this component reads (`alert.field(...)`), so the detectors upstream copy
    /// them into their alerts. Asked before any component is built.
    fn alert_keys(&self) -> Vec<String> {
        Vec::new()
    }
}

type AlertKeysFn = fn(&marked_yaml::Node) -> Vec<String>;
type BuildFn = fn(&marked_yaml::Node, &BuildContext<'_>) -> Result<Built, ConfigError>;
type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// A config problem, with the position of the offending YAML node when known.
#[derive(Debug)]
pub struct ConfigError {
    pub marker: Option<marked_yaml::Marker>,
    pub message: String,
}

#[derive(Clone, Copy)]
pub struct ComponentKind {
    pub type_name: &'static str,
    pub section: Section,
    pub description: &'static str,
    pub accepts: &'static [StreamKind],
    pub output: Option<StreamKind>,
    build: BuildFn,
    schema: SchemaFn,
    alert_keys: AlertKeysFn,
}

impl ComponentKind {
    /// The alert fields a component with this config reads (none when the config is invalid:
    /// building it reports why).
    pub fn alert_keys(&self, config: &marked_yaml::Node) -> Vec<String> {
        (self.alert_keys)(config)
    }
    pub fn build(&self, config: &marked_yaml::Node, ctx: &BuildContext<'_>) -> Result<Built, ConfigError> {
        (self.build)(config, ctx)
    }
    pub fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        (self.schema)(generator)
    }
}

fn build_fn<C: ComponentConfig>(node: &marked_yaml::Node, ctx: &BuildContext<'_>) -> Result<Built, ConfigError> {
    let config: C = marked_yaml::from_node(node).map_err(|e| ConfigError {
        marker: e.start_mark().or_else(|| node.span().start().copied()),
        message: describe_from_node_error(&e),
    })?;
    config.build(ctx).map_err(|e| ConfigError { marker: None, message: format!("{e:#}") })
}

fn alert_keys_fn<C: ComponentConfig>(node: &marked_yaml::Node) -> Vec<String> {
    marked_yaml::from_node::<C>(node).map(|c| c.alert_keys()).unwrap_or_default()
}

fn describe_from_node_error(e: &marked_yaml::FromNodeError) -> String {
    use marked_yaml::Error as E;
    match &**e {
        E::UnknownFieldError(field, expected, _) => {
            format!("unknown field `{field}`, expected one of: {}", expected.join(", "))
        }
        E::NotBoolean(_) => "expected true or false".to_string(),
        E::IntegerParseFailure(err, _) => format!("expected an integer: {err}"),
        E::FloatParseFailure(err, _) => format!("expected a number: {err}"),
        E::Other(msg, _) => msg.clone(),
    }
}

fn schema_fn<C: ComponentConfig>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.root_schema_for::<C>()
}

#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<(Section, &'static str), ComponentKind>,
}

impl Registry {
    pub fn register<C: ComponentConfig>(&mut self) -> &mut Self {
        let kind = ComponentKind {
            type_name: C::TYPE,
            section: C::SECTION,
            description: C::DESCRIPTION,
            accepts: C::ACCEPTS,
            output: C::OUTPUT,
            build: build_fn::<C>,
            schema: schema_fn::<C>,
            alert_keys: alert_keys_fn::<C>,
        };
        let previous = self.kinds.insert((C::SECTION, C::TYPE), kind);
        assert!(previous.is_none(), "component type {} registered twice", C::TYPE);
        self
    }

    pub fn get(&self, section: Section, type_name: &str) -> Option<&ComponentKind> {
        self.kinds.iter().find(|((s, t), _)| *s == section && *t == type_name).map(|(_, k)| k)
    }

    pub fn kinds(&self, section: Section) -> impl Iterator<Item = &ComponentKind> {
        self.kinds.values().filter(move |k| k.section == section)
    }

    pub fn type_names(&self, section: Section) -> Vec<&'static str> {
        self.kinds(section).map(|k| k.type_name).collect()
    }
}
