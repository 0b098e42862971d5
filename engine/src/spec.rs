//! Pipeline specs: YAML with `sources`, `operators` and `sinks`, each an `id`, a `type`, its
//! config and (for operators and sinks) `inputs`. Loading checks everything a spec can get
//! wrong and reports each problem with file, line, column and a reason.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::{Marker, Node};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::admin::AdminRoutes;
use crate::component::StreamKind;
use crate::registry::{BuildContext, Built, ComponentKind, Registry, Section};
use crate::resources::Resources;

/// The reserved input name for the quarantine output of every component at once.
pub const ALL_QUARANTINE: &str = "quarantine";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// All problems found in a spec.
#[derive(Debug)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Pipeline-wide settings (the spec's `settings:` block).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Length of a checkpoint epoch in milliseconds: the timely timestamp advances this often.
    #[serde(default = "default_epoch_ms")]
    pub epoch_interval_ms: u64,
    /// Largest number of records a source puts in one batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Flow control: bytes of records (as the sources read them) this process's sources may
    /// have in flight, emitted but not yet written by every sink. Past it sources stop polling
    /// until the sinks catch up, so a slow or stalled sink holds memory at about this bound
    /// instead of letting batches queue without limit.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`). Empty disables it.
    #[serde(default = "default_admin")]
    pub admin_listen: String,
    /// Environment variable holding the admin bearer token. When it is set (non-empty),
    /// mutating admin routes (`POST /rules/reload`) need `Authorization: Bearer <token>`; without
    /// a token they are refused on a non-loopback `admin_listen`.
    #[serde(default = "default_admin_token_env")]
    pub admin_token_env: String,
    /// Most admin connections open at once (further ones are closed on accept; never more
    /// than an eighth of the file-descriptor limit).
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// `Host` names the admin endpoint serves besides loopback ones (on a loopback address)
    /// or instead of any name (on another address).
    #[serde(default)]
    pub admin_allowed_hosts: Vec<String>,
    /// Periodic checkpoints (docs/architecture.md §4): off when absent.
    #[serde(default)]
    pub checkpoint: Option<crate::checkpoint::CheckpointConfig>,
    /// How object-store locations (`s3://…` checkpoints and Parquet paths) are reached:
    /// endpoint, region, plain HTTP, addressing style, timeouts and the retry budget.
    #[serde(default)]
    pub storage: crate::storage::StorageOptions,
    /// After SIGINT/SIGTERM, how long in-flight batches may take to drain (e.g. while a sink is
    /// in an outage). Past it Ward exits with code 1 without committing more: nothing
    /// committed is lost and the next run resumes from the newest checkpoint.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_timeout: std::time::Duration,
}

fn default_shutdown_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_epoch_ms() -> u64 {
    1000
}
fn default_batch_size() -> usize {
    1024
}
fn default_max_in_flight_bytes() -> u64 {
    512 << 20
}
fn default_admin() -> String {
    "127.0.0.1:9464".to_string()
}
/// An admin address: empty (disabled), `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`. Names
/// other than localhost are not resolved at validation, so they are refused.
pub fn parse_listen_address(s: &str) -> Result<(), String> {
    if s.is_empty() || s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if port.parse::<u16>().is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "`{}` is not an address to listen on: use IP:PORT (e.g. 127.0.0.1:9464), [::1]:PORT, localhost:PORT, or \"\" \
         to disable the endpoint",
        crate::text::escape_text(s)
    ))
}

fn default_admin_token_env() -> String {
    "WARD_ADMIN_TOKEN".to_string()
}
fn default_admin_max_connections() -> usize {
    crate::admin::DEFAULT_MAX_CONNECTIONS
}

/// Largest spec file read.
pub const MAX_SPEC_BYTES: usize = 4 << 20;

/// Largest `batch_size` (records per batch; batches are also cut at 64 MiB of payloads).
pub const MAX_BATCH_SIZE: usize = 1 << 20;

impl Settings {
    /// Problems with the values (shape errors are caught when the block is read), each with
    /// the setting it is about (a key of `settings`), so that it can be reported at its line.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        // `name`'s first part (`checkpoint` of `checkpoint.retain`) is the setting it is about.
        let mut range = |name: &'static str, v: u64, min: u64, max: u64| {
            if let Err(e) = crate::limits::check_range(name, v, min, max) {
                let setting = name.split(['.', ' ']).next().unwrap_or(name);
                out.push((setting, format!("settings: {e}")));
            }
        };
        let ms = |d: std::time::Duration| d.as_millis().min(u64::MAX as u128) as u64;
        range("epoch_interval_ms", self.epoch_interval_ms, 1, 3_600_000);
        range("batch_size", self.batch_size as u64, 1, MAX_BATCH_SIZE as u64);
        range("max_in_flight_bytes", self.max_in_flight_bytes, 1 << 20, 1 << 40);
        range("admin_max_connections", self.admin_max_connections as u64, 1, 65_536);
        if let Some(c) = &self.checkpoint {
            range("checkpoint.retain", c.retain as u64, 1, 10_000);
            range("checkpoint.interval (ms)", ms(c.interval), 1, 86_400_000);
        }
        let st = &self.storage;
        range("storage.request_timeout (ms)", ms(st.request_timeout), 100, 600_000);
        range("storage.retry_budget (ms)", ms(st.retry_budget), 0, 3_600_000);
        if let Some(c) = &self.checkpoint {
            let problem = match (c.dir.is_empty(), &c.url) {
                (false, Some(_)) => Some("settings: checkpoint: `dir` or `url`, not both".to_string()),
                (true, None) => {
                    Some("settings: checkpoint: `dir` (a directory) or `url` (an object store) is needed".to_string())
                }
                _ => crate::storage::check_location(c.location()).err().map(|e| format!("settings: checkpoint: {e}")),
            };
            out.extend(problem.map(|p| ("checkpoint", p)));
        }
        if let Err(e) = parse_listen_address(&self.admin_listen) {
            out.push(("admin_listen", format!("settings: admin_listen: {e}")));
        }
        out
    }

    /// The admin endpoint's guard options, with the token read from its environment variable.
    pub fn admin_options(&self) -> crate::admin::AdminOptions {
        let token = std::env::var(&self.admin_token_env).ok().filter(|t| !t.trim().is_empty());
        crate::admin::AdminOptions {
            token: token.map(|t| t.trim().to_string()),
            token_source: format!("${}", self.admin_token_env),
            max_connections: self.admin_max_connections.max(1),
            allowed_hosts: self.admin_allowed_hosts.clone(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            epoch_interval_ms: default_epoch_ms(),
            batch_size: default_batch_size(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            admin_listen: default_admin(),
            admin_token_env: default_admin_token_env(),
            admin_max_connections: default_admin_max_connections(),
            admin_allowed_hosts: Vec::new(),
            checkpoint: None,
            storage: Default::default(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

/// Which output of a component an input refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    Main,
    Quarantine,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InputRef {
    /// `id` or `id.quarantine`.
    Component { id: String, port: Port },
    /// `quarantine`: the quarantine outputs of all components.
    AllQuarantine,
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRef::Component { id, port: Port::Main } => write!(f, "{id}"),
            InputRef::Component { id, port: Port::Quarantine } => write!(f, "{id}.quarantine"),
            InputRef::AllQuarantine => write!(f, "{ALL_QUARANTINE}"),
        }
    }
}

#[derive(Clone)]
pub struct ComponentSpec {
    pub id: String,
    pub kind: ComponentKind,
    pub inputs: Vec<InputRef>,
    pub built: Built,
    pub position: (usize, usize),
    /// Event-time settings (sources only; defaults elsewhere).
    pub event_time: crate::time::EventTimeConfig,
}

impl ComponentSpec {
    pub fn section(&self) -> Section {
        self.kind.section
    }
}

#[derive(Clone)]
pub struct Spec {
    pub file: PathBuf,
    pub name: String,
    pub settings: Settings,
    /// Components in a topological order (every component after its inputs).
    pub components: Vec<ComponentSpec>,
    pub resources: Resources,
    /// Admin endpoint routes the components registered while they were built.
    pub admin_routes: AdminRoutes,
    /// The versioned contexts (rule sets, enrichment data) the components registered.
    pub contexts: crate::contexts::Contexts,
    /// Non-fatal findings (e.g. quarantine not routed to any sink).
    pub warnings: Vec<String>,
}

impl Spec {
    pub fn component(&self, id: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.id == id)
    }

    /// Loads and validates a spec file.
    pub fn load(path: &Path, registry: &Registry) -> Result<Spec, SpecErrors> {
        use std::io::Read;
        let fail =
            |message: String| SpecErrors(vec![SpecError { file: path.to_path_buf(), line: 0, column: 0, message }]);
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SPEC_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(fail(format!("larger than {MAX_SPEC_BYTES} bytes; not a pipeline spec")));
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| fail(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        Spec::parse(path, &text, Resources::new(base), registry)
    }

    /// Validates spec text; `file` is used in messages, `resources` resolves relative paths.
    /// `${NAME}` and `${NAME:-default}` are replaced from the environment first.
    pub fn parse(file: &Path, text: &str, resources: Resources, registry: &Registry) -> Result<Spec, SpecErrors> {
        Spec::parse_with_vars(file, text, resources, registry, &|name| std::env::var(name).ok())
    }

    /// [`Spec::parse`] with the variables looked up by `vars` instead of the environment.
    pub fn parse_with_vars(
        file: &Path,
        text: &str,
        resources: Resources,
        registry: &Registry,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Spec, SpecErrors> {
        let text = crate::interpolate::interpolate(text, vars).map_err(|errors| {
            SpecErrors(
                errors
                    .into_iter()
                    .map(|e| SpecError { file: file.to_path_buf(), line: e.line, column: e.column, message: e.message })
                    .collect(),
            )
        })?;
        let text = text.as_str();
        let mut v = Validator {
            file: file.to_path_buf(),
            errors: Vec::new(),
            broken: Default::default(),
            admin: AdminRoutes::new(),
            contexts: Default::default(),
            io: Default::default(),
            downstream_alert_keys: HashMap::new(),
            storage: Default::default(),
        };
        let spec = v.run(text, resources, registry);
        match spec {
            Some(spec) if v.errors.is_empty() => Ok(spec),
            _ => {
                let mut errors = v.errors;
                errors.sort_by_key(|e| (e.line, e.column));
                errors.dedup();
                Err(SpecErrors(errors))
            }
        }
    }

    /// The DAG as Mermaid flowchart text.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for c in &self.components {
            let (open, close) = match c.section() {
                Section::Source => ("[/", "/]"),
                Section::Operator => ("[", "]"),
                Section::Sink => ("[(", ")]"),
            };
            out.push_str(&format!("    {}{}\"{}<br/>{}\"{}\n", mermaid_id(&c.id), open, c.id, c.kind.type_name, close));
        }
        for (from, to, label) in self.edges() {
            out.push_str(&format!("    {} -->|{}| {}\n", mermaid_id(&from), label, mermaid_id(&to)));
        }
        out
    }

    /// The DAG in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n    rankdir=LR;\n", self.name.replace('"', "'"));
        for c in &self.components {
            let shape = match c.section() {
                Section::Source => "invhouse",
                Section::Operator => "box",
                Section::Sink => "cylinder",
            };
            out.push_str(&format!("    \"{}\" [shape={shape}, label=\"{}\\n{}\"];\n", c.id, c.id, c.kind.type_name));
        }
        for (from, to, label) in self.edges() {
            out.push_str(&format!("    \"{from}\" -> \"{to}\" [label=\"{label}\"];\n"));
        }
        out.push_str("}\n");
        out
    }

    /// Edges (producer, consumer, stream kind); `quarantine` inputs expand to every producer.
    pub fn edges(&self) -> Vec<(String, String, &'static str)> {
        let mut edges = Vec::new();
        for c in &self.components {
            for input in &c.inputs {
                match input {
                    InputRef::Component { id, port: Port::Main } => {
                        let kind =
                            self.component(id).and_then(|p| p.kind.output).map(StreamKind::as_str).unwrap_or("?");
                        edges.push((id.clone(), c.id.clone(), kind));
                    }
                    InputRef::Component { id, port: Port::Quarantine } => {
                        edges.push((id.clone(), c.id.clone(), "quarantine"))
                    }
                    InputRef::AllQuarantine => {
                        for p in self.components.iter().filter(|p| p.section() != Section::Sink) {
                            edges.push((p.id.clone(), c.id.clone(), "quarantine"));
                        }
                    }
                }
            }
        }
        edges
    }
}

fn mermaid_id(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

struct Validator {
    file: PathBuf,
    errors: Vec<SpecError>,
    /// Ids of components that exist but could not be read (unknown type, ...): references to
    /// them are not reported again as dangling.
    broken: std::collections::HashSet<String>,
    admin: AdminRoutes,
    contexts: crate::contexts::Contexts,
    /// Files the components declared they read or write.
    io: std::cell::RefCell<Vec<crate::registry::FileUse>>,
    /// Per component, the alert fields its downstream components read.
    downstream_alert_keys: HashMap<String, Vec<crate::registry::AlertKey>>,
    /// `settings.storage`, read before the components (which may open object stores).
    storage: crate::storage::StorageOptions,
}

struct Pending {
    id: String,
    kind: ComponentKind,
    inputs: Vec<(InputRef, Marker)>,
    built: Option<Built>,
    marker: Marker,
    event_time: crate::time::EventTimeConfig,
}

impl Validator {
    fn err(&mut self, marker: Option<&Marker>, message: impl Into<String>) {
        let (line, column) = marker.map(|m| (m.line(), m.column())).unwrap_or((0, 0));
        // Messages quote the spec's own text (ids, types, values): never echo control or
        // bidi characters raw to a terminal.
        let message = crate::text::escape_text(&message.into()).into_owned();
        self.errors.push(SpecError { file: self.file.clone(), line, column, message });
    }

    fn run(&mut self, text: &str, resources: Resources, registry: &Registry) -> Option<Spec> {
        if text.len() > MAX_SPEC_BYTES {
            self.err(None, format!("spec is {} bytes; at most {MAX_SPEC_BYTES} are read", text.len()));
            return None;
        }
        if let Err(e) = crate::limits::check_yaml_depth(text) {
            self.err(Some(&Marker::new(0, 1, 1, 0)), e);
            return None;
        }
        let root = match marked_yaml::parse_yaml_with_options(
            0,
            text,
            marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true).toplevel_mapping(),
        ) {
            Ok(n) => n,
            Err(e) => {
                let (marker, msg) = load_error(&e);
                self.err(marker.as_ref(), msg);
                return None;
            }
        };
        let map = root.as_mapping()?;
        let mut name = self.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut settings = Settings::default();
        let mut pending: Vec<Pending> = Vec::new();
        let mut seen_sections = false;
        self.downstream_alert_keys = downstream_alert_keys(map, registry);
        if let Some(Ok(s)) = map.get_node("settings").map(marked_yaml::from_node::<Settings>) {
            self.storage = s.storage;
        }
        for (key, value) in map.iter() {
            match key.as_str() {
                "name" => match value.as_scalar() {
                    Some(s) => name = s.as_str().to_string(),
                    None => self.err(value.span().start(), "`name` must be a string"),
                },
                "description" => {}
                "settings" => match marked_yaml::from_node::<Settings>(value) {
                    Ok(s) => {
                        // At the line of the setting, when the block names it.
                        for (setting, p) in s.problems() {
                            let node = value.as_mapping().and_then(|m| m.get_node(setting)).unwrap_or(value);
                            self.err(node.span().start(), p);
                        }
                        settings = s
                    }
                    Err(e) => {
                        let m = e.start_mark().or_else(|| value.span().start().copied());
                        self.err(m.as_ref(), format!("settings: {e}"))
                    }
                },
                "sources" | "operators" | "sinks" => {
                    seen_sections = true;
                    let section = match key.as_str() {
                        "sources" => Section::Source,
                        "operators" => Section::Operator,
                        _ => Section::Sink,
                    };
                    let Some(seq) = value.as_sequence() else {
                        self.err(value.span().start(), format!("`{}` must be a list of components", key.as_str()));
                        continue;
                    };
                    for item in seq.iter() {
                        if let Some(p) = self.component(item, section, &resources, registry) {
                            pending.push(p);
                        }
                    }
                }
                other => self.err(
                    key.span().start(),
                    format!("unknown top-level key `{other}`, expected one of: name, description, settings, sources, operators, sinks"),
                ),
            }
        }
        if !seen_sections || !pending.iter().any(|p| p.kind.section == Section::Source) {
            self.err(root.span().start(), "a pipeline needs at least one source under `sources`");
        }
        if !pending.iter().any(|p| p.kind.section == Section::Sink) {
            self.err(root.span().start(), "a pipeline needs at least one sink under `sinks`");
        }
        let warnings = self.check_graph(&pending);
        self.check_file_uses(&pending);
        let order = self.topological_order(&pending)?;
        if !self.errors.is_empty() {
            return None;
        }
        let mut by_index: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
        let components = order
            .into_iter()
            .filter_map(|i| by_index[i].take())
            .map(|p| ComponentSpec {
                id: p.id,
                kind: p.kind,
                inputs: p.inputs.into_iter().map(|(i, _)| i).collect(),
                built: p.built.expect("built when there are no errors"),
                position: (p.marker.line(), p.marker.column()),
                event_time: p.event_time,
            })
            .collect();
        Some(Spec {
            file: self.file.clone(),
            name,
            settings,
            components,
            resources,
            admin_routes: self.admin.clone(),
            contexts: self.contexts.clone(),
            warnings,
        })
    }

    fn component(
        &mut self,
        item: &Node,
        section: Section,
        resources: &Resources,
        registry: &Registry,
    ) -> Option<Pending> {
        let start = item.span().start().copied().unwrap_or_else(|| Marker::new(0, 0, 0, 0));
        let Some(map) = item.as_mapping() else {
            self.err(Some(&start), format!("each entry of `{}` must be a mapping with `id` and `type`", section.key()));
            return None;
        };
        let id = match map.get_scalar("id") {
            Some(s) => s.as_str().to_string(),
            None => {
                self.err(Some(&start), "missing field `id`");
                return None;
            }
        };
        let id_marker = map.get_node("id").and_then(|n| n.span().start().copied()).unwrap_or(start);
        if !valid_id(&id) {
            self.err(
                Some(&id_marker),
                format!("invalid id `{id}`: use letters, digits, `_` and `-`, starting with a letter or digit"),
            );
        }
        if id == ALL_QUARANTINE {
            self.err(
                Some(&id_marker),
                format!("`{ALL_QUARANTINE}` is reserved for the merged quarantine stream; choose another id"),
            );
        }
        let Some(type_node) = map.get_scalar("type") else {
            self.err(Some(&start), format!("component `{id}`: missing field `type`"));
            self.broken.insert(id);
            return None;
        };
        let type_marker = type_node.span().start().copied();
        let Some(kind) = registry.get(section, type_node.as_str()).copied() else {
            let other_sections: Vec<String> = [Section::Source, Section::Operator, Section::Sink]
                .into_iter()
                .filter(|s| *s != section && registry.get(*s, type_node.as_str()).is_some())
                .map(|s| format!("`{}`", s.key()))
                .collect();
            let hint = match other_sections.is_empty() {
                false => format!(" (`{}` belongs under {})", type_node.as_str(), other_sections.join(" or ")),
                true => String::new(),
            };
            self.err(
                type_marker.as_ref(),
                format!(
                    "component `{id}`: unknown {} type `{}`{hint}; known types: {}",
                    section_noun(section),
                    type_node.as_str(),
                    registry.type_names(section).join(", ")
                ),
            );
            self.broken.insert(id);
            return None;
        };

        let mut inputs = Vec::new();
        match (map.get_node("inputs"), section) {
            (Some(n), Section::Source) => {
                self.err(n.span().start(), format!("source `{id}` cannot have `inputs`"));
            }
            (None, Section::Operator | Section::Sink) => {
                self.err(Some(&start), format!("component `{id}`: missing field `inputs`"));
            }
            (Some(n), _) => match n.as_sequence() {
                Some(seq) if !seq.is_empty() => {
                    for i in seq.iter() {
                        match i.as_scalar() {
                            Some(s) => {
                                let m = s.span().start().copied().unwrap_or(start);
                                inputs.push((parse_input(s.as_str()), m));
                            }
                            None => self.err(i.span().start(), "each input must be a component id"),
                        }
                    }
                }
                _ => self.err(n.span().start(), format!("component `{id}`: `inputs` must be a non-empty list of ids")),
            },
            (None, Section::Source) => {}
        }

        let mut event_time = crate::time::EventTimeConfig::default();
        if let Some(n) = map.get_node("event_time") {
            if section != Section::Source {
                self.err(n.span().start(), format!("component `{id}`: only sources have `event_time`"));
            } else {
                match marked_yaml::from_node::<crate::time::EventTimeConfig>(n) {
                    Ok(c) => event_time = c,
                    Err(e) => {
                        let m = e.start_mark().or_else(|| n.span().start().copied());
                        self.err(m.as_ref(), format!("source `{id}`: `event_time`: {e}"));
                    }
                }
            }
        }

        // The config is the mapping minus the generic keys.
        let mut config = map.clone();
        for k in ["id", "type", "inputs", "event_time"] {
            config.remove(k);
        }
        let config_node = Node::from(config);
        let downstream = self.downstream_alert_keys.get(&id).cloned().unwrap_or_default();
        let storage = self.storage.clone();
        let ctx = BuildContext {
            component_id: &id,
            resources,
            admin: &self.admin,
            contexts: &self.contexts,
            io: &self.io,
            downstream_alert_keys: &downstream,
            storage: &storage,
        };
        let built = match kind.build(&config_node, &ctx) {
            Ok(b) => Some(b),
            Err(e) => {
                let m = e.marker.unwrap_or(start);
                self.err(Some(&m), format!("component `{id}` ({}): {}", kind.type_name, e.message));
                None
            }
        };
        Some(Pending { id, kind, inputs, built, marker: start, event_time })
    }

    /// Unique ids, inputs that exist, stream kinds that match, outputs that are consumed.
    fn check_graph(&mut self, pending: &[Pending]) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut by_id: HashMap<&str, &Pending> = HashMap::new();
        for p in pending {
            if let Some(first) = by_id.get(p.id.as_str()) {
                let msg = format!("duplicate id `{}` (first defined at line {})", p.id, first.marker.line());
                self.err(Some(&p.marker), msg);
            } else {
                by_id.insert(&p.id, p);
            }
        }
        let mut consumed: BTreeMap<&str, bool> = BTreeMap::new();
        let mut quarantine_routed = false;
        for p in pending {
            for (input, marker) in &p.inputs {
                let kind = match input {
                    InputRef::AllQuarantine => {
                        quarantine_routed = true;
                        StreamKind::Quarantine
                    }
                    InputRef::Component { id, port } => {
                        let Some(producer) = by_id.get(id.as_str()) else {
                            if self.broken.contains(id) {
                                continue;
                            }
                            let mut known: Vec<_> = by_id.keys().copied().filter(|k| *k != p.id).collect();
                            known.sort();
                            self.err(
                                Some(marker),
                                format!(
                                    "component `{}`: input `{input}` does not exist; known ids: {}",
                                    p.id,
                                    known.join(", ")
                                ),
                            );
                            continue;
                        };
                        if producer.kind.section == Section::Sink {
                            self.err(
                                Some(marker),
                                format!("component `{}`: input `{input}` is a sink, which has no output", p.id),
                            );
                            continue;
                        }
                        match port {
                            Port::Main => {
                                consumed.insert(&producer.id, true);
                                producer.kind.output.expect("non-sinks have an output")
                            }
                            Port::Quarantine => {
                                quarantine_routed = true;
                                StreamKind::Quarantine
                            }
                        }
                    }
                };
                if !p.kind.accepts.contains(&kind) {
                    let accepted: Vec<_> = p.kind.accepts.iter().map(|k| k.as_str()).collect();
                    self.err(
                        Some(marker),
                        format!(
                            "type mismatch: `{}` ({}) accepts {} but input `{input}` is a {} stream",
                            p.id,
                            p.kind.type_name,
                            accepted.join(" or "),
                            kind.as_str()
                        ),
                    );
                }
            }
        }
        // With a broken component its inputs are unknown, so "not consumed" would be a guess.
        let any_broken = !self.broken.is_empty();
        for p in pending.iter().filter(|_| !any_broken) {
            if p.kind.section != Section::Sink && !consumed.contains_key(p.id.as_str()) {
                self.err(
                    Some(&p.marker),
                    format!(
                        "the output of `{}` is not an input of any operator or sink, so its records would be lost",
                        p.id
                    ),
                );
            }
        }
        if !quarantine_routed {
            warnings.push(
                "no sink reads `quarantine`: quarantined records are counted in metrics but not written anywhere"
                    .to_string(),
            );
        }
        warnings
    }

    /// Kahn's algorithm; on a cycle, reports it by name at each member.
    /// A sink writing a file a source reads would truncate the input before it is read, and
    /// two sinks on one file would interleave torn lines: both are refused, after resolving
    /// paths (symlinks, `..`) and globs.
    fn check_file_uses(&mut self, pending: &[Pending]) {
        let uses = std::mem::take(&mut *self.io.borrow_mut());
        let real = |p: &Path| -> PathBuf {
            if let Ok(c) = std::fs::canonicalize(p) {
                return c;
            }
            // Not there yet (an output): its directory's real path and its name.
            match (p.parent(), p.file_name()) {
                (Some(dir), Some(name)) => {
                    std::fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
                        .map(|d| d.join(name))
                        .unwrap_or_else(|_| p.to_path_buf())
                }
                _ => p.to_path_buf(),
            }
        };
        let resolved: Vec<(PathBuf, &crate::registry::FileUse)> = uses.iter().map(|u| (real(&u.path), u)).collect();
        let covers = |w: &(PathBuf, &crate::registry::FileUse), other: &Path| {
            if w.1.dir {
                other.starts_with(&w.0)
            } else {
                other == w.0
            }
        };
        let marker = |id: &str| pending.iter().find(|p| p.id == id).map(|p| p.marker);
        let mut problems = Vec::new();
        for (i, w) in resolved.iter().enumerate().filter(|(_, w)| w.1.write) {
            for (j, other) in resolved.iter().enumerate() {
                if i == j || other.1.component == w.1.component {
                    continue;
                }
                let clash = covers(w, &other.0) || (other.1.write && covers(other, &w.0));
                if !clash {
                    continue;
                }
                let shown = w.0.display();
                if !other.1.write {
                    problems.push((
                        w.1.component.clone(),
                        format!(
                            "sink `{}` writes {shown}, which source `{}` reads: the input would be truncated before it is read",
                            w.1.component, other.1.component
                        ),
                    ));
                } else if i < j {
                    problems.push((
                        other.1.component.clone(),
                        format!(
                            "sinks `{}` and `{}` both write {shown}: their output would interleave",
                            w.1.component, other.1.component
                        ),
                    ));
                }
            }
        }
        problems.dedup();
        for (component, message) in problems {
            let m = marker(&component);
            self.err(m.as_ref(), message);
        }
    }

    fn topological_order(&mut self, pending: &[Pending]) -> Option<Vec<usize>> {
        let index: HashMap<&str, usize> = pending.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
        let deps: Vec<Vec<usize>> = pending
            .iter()
            .map(|p| {
                p.inputs
                    .iter()
                    .filter_map(|(i, _)| match i {
                        InputRef::Component { id, .. } => index.get(id.as_str()).copied(),
                        // `quarantine` depends on every non-sink; a sink can't be in a cycle.
                        InputRef::AllQuarantine => None,
                    })
                    .collect()
            })
            .collect();
        // Kahn's algorithm, first-in first-out in spec order (the order components are built in).
        let n = pending.len();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (j, d) in deps.iter().enumerate() {
            for &x in d {
                dependents[x].push(j);
            }
        }
        let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &j in &dependents[i] {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push_back(j);
                }
            }
        }
        if order.len() < n {
            // Each cycle on its own, with its members in data-flow order; components that only
            // consume a cycle's output are not part of it.
            for cycle in cycles(&dependents, &indegree) {
                let mut path: Vec<&str> = cycle.iter().map(|&i| pending[i].id.as_str()).collect();
                path.push(path[0]);
                let text = path.join(" -> ");
                for &i in &cycle {
                    self.err(
                        Some(&pending[i].marker),
                        format!("cycle: `{}` is part of the cycle {text}", pending[i].id),
                    );
                }
            }
            return None;
        }
        Some(order)
    }
}

/// The cycles among the nodes Kahn's algorithm could not order (`indegree` > 0): one per
/// strongly connected component that has a cycle, as a closed walk starting at its smallest
/// node. Iterative (a spec's chains can be long).
fn cycles(dependents: &[Vec<usize>], indegree: &[usize]) -> Vec<Vec<usize>> {
    let n = dependents.len();
    let left: Vec<bool> = indegree.iter().map(|&d| d > 0).collect();
    // Kosaraju: finishing order on the graph, then components on the reversed graph.
    let mut finished = Vec::new();
    let mut seen = vec![false; n];
    for start in (0..n).filter(|&i| left[i]) {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![(start, 0usize)];
        while let Some((v, k)) = stack.pop() {
            let next = dependents[v].iter().skip(k).position(|&w| left[w] && !seen[w]).map(|p| p + k);
            match next {
                Some(p) => {
                    stack.push((v, p + 1));
                    let w = dependents[v][p];
                    seen[w] = true;
                    stack.push((w, 0));
                }
                None => finished.push(v),
            }
        }
    }
    let mut reverse: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (v, ds) in dependents.iter().enumerate() {
        for &w in ds {
            reverse[w].push(v);
        }
    }
    let mut component = vec![usize::MAX; n];
    let mut out = Vec::new();
    for &root in finished.iter().rev() {
        if component[root] != usize::MAX {
            continue;
        }
        let id = root;
        let mut members = vec![root];
        component[root] = id;
        let mut k = 0;
        while k < members.len() {
            let v = members[k];
            k += 1;
            for &w in &reverse[v] {
                if left[w] && component[w] == usize::MAX {
                    component[w] = id;
                    members.push(w);
                }
            }
        }
        let self_loop = members.len() == 1 && dependents[root].contains(&root);
        if members.len() < 2 && !self_loop {
            continue;
        }
        // A closed walk from the smallest member: breadth-first within the component back to it.
        let s = *members.iter().min().expect("non-empty");
        let mut parent = vec![usize::MAX; n];
        let mut queue = std::collections::VecDeque::from([s]);
        let mut last = None;
        'search: while let Some(v) = queue.pop_front() {
            for &w in &dependents[v] {
                if component[w] != id {
                    continue;
                }
                if w == s {
                    last = Some(v);
                    break 'search;
                }
                if parent[w] == usize::MAX {
                    parent[w] = v;
                    queue.push_back(w);
                }
            }
        }
        let mut walk = Vec::new();
        let mut v = last.expect("a strongly connected component has a cycle through each member");
        while v != s {
            walk.push(v);
            v = parent[v];
        }
        walk.push(s);
        walk.reverse();
        out.push(walk);
    }
    out.sort();
    out
}

fn section_noun(s: Section) -> &'static str {
    match s {
        Section::Source => "source",
        Section::Operator => "operator",
        Section::Sink => "sink",
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// For every component, the alert fields read by the components downstream of it (a first,
/// forgiving pass over the spec: whatever is malformed here is reported when it is built).
fn downstream_alert_keys(
    root: &marked_yaml::types::MarkedMappingNode,
    registry: &Registry,
) -> HashMap<String, Vec<crate::registry::AlertKey>> {
    let mut readers: HashMap<String, Vec<String>> = HashMap::new();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for (section, key) in [(Section::Operator, "operators"), (Section::Sink, "sinks")] {
        let Some(seq) = root.get_node(key).and_then(Node::as_sequence) else { continue };
        for item in seq.iter() {
            let Some(map) = item.as_mapping() else { continue };
            let (Some(id), Some(kind)) =
                (map.get_scalar("id"), map.get_scalar("type").and_then(|t| registry.get(section, t.as_str())))
            else {
                continue;
            };
            let mut config = map.clone();
            for k in ["id", "type", "inputs", "event_time"] {
                config.remove(k);
            }
            let keys = kind.alert_keys(&Node::from(config));
            if !keys.is_empty() {
                readers.insert(id.as_str().to_string(), keys);
            }
            for input in map.get_sequence("inputs").into_iter().flat_map(|s| s.iter()) {
                if let Some(InputRef::Component { id: from, port: Port::Main }) =
                    input.as_scalar().map(|s| parse_input(s.as_str()))
                {
                    children.entry(from).or_default().push(id.as_str().to_string());
                }
            }
        }
    }
    let mut out = HashMap::new();
    for start in children.keys() {
        let mut keys = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = children[start].clone();
        while let Some(c) = stack.pop() {
            if !seen.insert(c.clone()) {
                continue;
            }
            for field in readers.get(&c).into_iter().flatten() {
                keys.push(crate::registry::AlertKey { reader: c.clone(), field: field.clone() });
            }
            stack.extend(children.get(&c).into_iter().flatten().cloned());
        }
        if !keys.is_empty() {
            out.insert(start.clone(), keys);
        }
    }
    out
}

fn parse_input(s: &str) -> InputRef {
    if s == ALL_QUARANTINE {
        return InputRef::AllQuarantine;
    }
    match s.strip_suffix(".quarantine") {
        Some(id) => InputRef::Component { id: id.to_string(), port: Port::Quarantine },
        None => InputRef::Component { id: s.to_string(), port: Port::Main },
    }
}

fn load_error(e: &marked_yaml::LoadError) -> (Option<Marker>, String) {
    use marked_yaml::LoadError as L;
    match e {
        L::TopLevelMustBeMapping(m) => (Some(*m), "the spec must be a YAML mapping".into()),
        L::TopLevelMustBeSequence(m) => (Some(*m), "expected a sequence".into()),
        L::UnexpectedAnchor(m) => (Some(*m), "YAML anchors and aliases are not supported in specs".into()),
        L::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain strings".into()),
        L::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported in specs".into()),
        L::ScanError(m, s) => (Some(*m), format!("invalid YAML: {s}")),
        L::DuplicateKey(d) => (d.key.span().start().copied(), format!("duplicate key `{}`", d.key.as_str())),
    }
}

/// The JSON Schema for pipeline specs, generated from the registered config types.
pub fn json_schema(registry: &Registry) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut defs = Map::new();
    let mut sections = Map::new();
    for section in [Section::Source, Section::Operator, Section::Sink] {
        let mut variants = Vec::new();
        for kind in registry.kinds(section) {
            let mut schema = kind.schema(&mut generator).to_value();
            if let Some(obj) = schema.as_object_mut() {
                if let Some(Value::Object(d)) = obj.remove("$defs") {
                    defs.extend(d);
                }
                obj.remove("$schema");
                obj.insert("description".into(), Value::from(kind.description));
                let props = obj.entry("properties").or_insert_with(|| json!({}));
                if let Some(p) = props.as_object_mut() {
                    p.insert("id".into(), json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$"}));
                    p.insert("type".into(), json!({"const": kind.type_name}));
                    if section != Section::Source {
                        p.insert("inputs".into(), json!({"type": "array", "items": {"type": "string"}, "minItems": 1}));
                    } else {
                        p.insert("event_time".into(), json!({"$ref": "#/$defs/EventTimeConfig"}));
                    }
                }
                let req = obj.entry("required").or_insert_with(|| json!([]));
                if let Some(r) = req.as_array_mut() {
                    r.push(json!("id"));
                    r.push(json!("type"));
                    if section != Section::Source {
                        r.push(json!("inputs"));
                    }
                }
            }
            variants.push(schema);
        }
        sections.insert(section.key().into(), json!({"type": "array", "items": {"oneOf": variants}}));
    }
    let mut event_time = generator.root_schema_for::<crate::time::EventTimeConfig>().to_value();
    if let Some(obj) = event_time.as_object_mut() {
        obj.remove("$schema");
    }
    defs.insert("EventTimeConfig".into(), event_time);
    let settings = generator.root_schema_for::<Settings>().to_value();
    let mut props = sections;
    props.insert("name".into(), json!({"type": "string"}));
    props.insert("description".into(), json!({"type": "string"}));
    props.insert("settings".into(), settings);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Ward pipeline spec",
        "type": "object",
        "additionalProperties": false,
        "required": ["sources", "sinks"],
        "properties": props,
        "$defs": defs,
    })
}
