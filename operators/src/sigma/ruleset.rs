//! A rule set: Sigma files read from directories and files, compiled into one matcher, with a
//! report per rule and a content-hash version.

use ahash::AHashMap as HashMap;
use std::path::Path;

use std::sync::Arc;

use super::correlation::CorrelationSet;

use super::mapping::FieldKey;
use ward_engine::resources::Resources;
use xxhash_rust::xxh3::Xxh3;

use super::compile::{
    apply_filter, lower_rule, CompileOptions, LoweredRule, MatcherBuilder, RouteCache, RuleReport, Status,
};
use super::matcher::Matcher;

pub struct RuleSet {
    pub matcher: Matcher,
    /// Content hash of the rule files and the compile options (16 hex digits).
    pub version: String,
    pub reports: Vec<RuleReport>,
    /// Correlation rules found beside the detection rules, compiled (the `correlate`
    /// operator evaluates them; sigma-match copies the fields they need into alerts).
    pub correlations: Arc<CorrelationSet>,
    /// Per rule id: the Sigma fields its alerts carry for correlations, with the keys each is
    /// looked up under.
    pub extract: HashMap<String, Vec<(String, Vec<FieldKey>)>>,
    pub files: usize,
    /// Compiled rules whose logsource no specific routing entry covered.
    pub unrouted: usize,
    /// Per logsource product (`-`: none): compiled rules (with a routing entry, without).
    pub routing: std::collections::BTreeMap<String, (usize, usize)>,
}

impl RuleSet {
    /// The event fields the rules read, for a source's projection (`fields`): those their
    /// tests and logsource routes name, and those their alerts carry for correlations; Windows
    /// event data found under other names (`Event.UserData.<Element>.<Name>`, names with
    /// spaces) as `*` patterns. `None` when a rule searches keywords: any field may match.
    pub fn fields_read(&self) -> Option<Vec<String>> {
        if self.matcher.reads_keywords() {
            return None;
        }
        let name = |k: &FieldKey| match k {
            FieldKey::Core(id) => id.name().to_string(),
            FieldKey::Ext(n) => n.clone(),
        };
        let mut out = std::collections::BTreeSet::new();
        out.extend(self.matcher.fields.iter().flat_map(|f| f.keys.iter().map(name)));
        out.extend(self.extract.values().flatten().flat_map(|(_, keys)| keys.iter().map(name)));
        if !self.matcher.data_lookup.is_empty() {
            out.insert(format!("{}*", super::mapping::USER_DATA));
            out.insert(format!("{}* *", super::mapping::EVENT_DATA));
        }
        Some(out.into_iter().collect())
    }

    pub fn count(&self, status: fn(&Status) -> bool) -> usize {
        self.reports.iter().filter(|r| status(&r.status)).count()
    }
    pub fn compiled(&self) -> usize {
        self.count(|s| *s == Status::Compiled)
    }
    pub fn rejected(&self) -> usize {
        self.count(|s| matches!(s, Status::Rejected(_)))
    }
    /// (path, id, note) of every note on a loaded rule (e.g. a placeholder without values).
    pub fn notes(&self) -> Vec<(&str, &str, &str)> {
        self.reports
            .iter()
            .flat_map(|r| r.notes.iter().map(move |n| (r.path.as_str(), r.id.as_str(), n.as_str())))
            .collect()
    }

    /// (path, id, reason) of every rejected rule.
    pub fn rejections(&self) -> Vec<(&str, &str, &str)> {
        self.reports
            .iter()
            .filter_map(|r| match &r.status {
                Status::Rejected(why) => Some((r.path.as_str(), r.id.as_str(), why.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// What `load` works on: rule files in memory, so the CLI, tests and the operator share it.
#[derive(Clone, Debug)]
pub struct RuleFile {
    pub path: String,
    /// The path below the directory it was found in (what the version hashes, so that moving
    /// a rule directory does not change the version).
    pub rel: String,
    pub text: String,
    /// Why the file cannot be read as rules (not UTF-8, too large); it is rejected alone.
    pub problem: Option<String>,
}

/// Largest rule file read (SigmaHQ's largest is about 40 KB).
pub const MAX_RULE_FILE_BYTES: u64 = 1 << 20;

impl RuleFile {
    pub fn new(path: impl Into<String>, rel: impl Into<String>, text: impl Into<String>) -> RuleFile {
        RuleFile { path: path.into(), rel: rel.into(), text: text.into(), problem: None }
    }
}

/// Reads every `.yml`/`.yaml` file under each of `paths` (files or directories). A file that
/// cannot be used (not UTF-8, over [`MAX_RULE_FILE_BYTES`]) comes back with its `problem`, to
/// be rejected alone like a YAML error; only a missing path is an error.
pub fn read_rule_files(resources: &Resources, paths: &[String]) -> anyhow::Result<Vec<RuleFile>> {
    let mut files = Vec::new();
    for p in paths {
        let root = resources.resolve(p);
        for f in resources.list_files(p, &["yml", "yaml"])? {
            let rel = match f.strip_prefix(&root) {
                Ok(r) if !r.as_os_str().is_empty() => r.display().to_string(),
                _ => f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            };
            let mut file = RuleFile::new(f.display().to_string(), rel, String::new());
            match resources.read_file(&f, MAX_RULE_FILE_BYTES + 1) {
                Err(e) => file.problem = Some(format!("cannot read: {e}")),
                Ok(bytes) if bytes.len() as u64 > MAX_RULE_FILE_BYTES => {
                    file.problem = Some(format!("file larger than {MAX_RULE_FILE_BYTES} bytes"))
                }
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => file.text = t,
                    Err(e) => {
                        file.problem =
                            Some(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
                    }
                },
            }
            files.push(file);
        }
    }
    Ok(files)
}

/// Compiles rule files; the `lowered` sink receives each compiled rule (for `explain`).
pub fn compile_files(
    files: &[RuleFile],
    opts: &CompileOptions,
    lowered_out: Option<&mut Vec<LoweredRule>>,
) -> anyhow::Result<RuleSet> {
    let mut hasher = Xxh3::new();
    hasher.update(opts.fingerprint().as_bytes());
    let mut reports = Vec::new();
    let mut lowered: Vec<LoweredRule> = Vec::new();
    let mut filters = Vec::new();
    let mut correlations = Vec::new();
    let mut first_seen: HashMap<String, String> = HashMap::new();
    // Rules converted from Sigma 1 aggregations, with what the conversion did.
    let mut converted_notes: HashMap<String, String> = HashMap::new();
    let mut routes = RouteCache::default();
    for f in files {
        hasher.update(f.rel.as_bytes());
        hasher.update(&[0]);
        hasher.update(f.text.as_bytes());
        hasher.update(&[0]);
        let short = short_path(&f.path);
        let problem = f.problem.clone().or_else(|| {
            if f.text.len() as u64 > MAX_RULE_FILE_BYTES {
                return Some(format!("file larger than {MAX_RULE_FILE_BYTES} bytes"));
            }
            // Before parsing: a deeply nested document makes the YAML parser slow and deep.
            ward_engine::limits::check_yaml_depth(&f.text).err()
        });
        if let Some(why) = problem {
            hasher.update(why.as_bytes());
            reports.push(rejected(&short, "-", "-", why));
            continue;
        }
        let converted = super::sigma1::convert(&f.text);
        let text = converted.as_ref().map_or(f.text.as_str(), |c| c.text.as_str());
        if let Some(c) = &converted {
            converted_notes.extend(c.notes.iter().cloned());
        }
        let collection = match rsigma_parser::parse_sigma_yaml(text) {
            Ok(c) => c,
            Err(e) => {
                reports.push(rejected(&short, "-", "-", format!("cannot parse: {e}")));
                continue;
            }
        };
        if !collection.errors.is_empty() {
            let parsed: Vec<&str> = collection.rules.iter().filter_map(|r| r.id.as_deref()).collect();
            let unparsed = unparsed_documents(text, &parsed);
            for (i, e) in collection.errors.iter().enumerate() {
                let (id, title, condition) = unparsed.get(i).cloned().unwrap_or_default();
                reports.push(rejected(&short, &id, &title, parse_failure(e, &condition)));
            }
        }
        for rule in &collection.rules {
            let id = rule.id.clone().unwrap_or_else(|| "-".into());
            if let Some(first) = rule.id.as_ref().and_then(|id| first_seen.get(id)) {
                reports.push(rejected(&short, &id, &rule.title, format!("duplicate rule id (first in {first})")));
                continue;
            }
            match lower_rule(opts, &mut routes, rule, &short) {
                Ok(mut l) => {
                    if let Some(note) = converted_notes.get(&id) {
                        l.notes.push(note.clone());
                    }
                    if let Some(id) = &rule.id {
                        first_seen.insert(id.clone(), short.clone());
                    }
                    reports.push(RuleReport {
                        path: short.clone(),
                        id,
                        title: rule.title.clone(),
                        status: Status::Compiled,
                        notes: l.notes.clone(),
                    });
                    lowered.push(l);
                }
                Err(why) => reports.push(rejected(&short, &id, &rule.title, why)),
            }
        }
        for c in collection.correlations {
            correlations.push((short.clone(), c));
        }
        for flt in collection.filters {
            filters.push((short.clone(), flt));
        }
    }
    // Filters name their targets by id or name.
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, l) in lowered.iter().enumerate() {
        names.insert(l.meta.rule.id.clone(), i);
    }
    for (path, flt) in &filters {
        let status = match apply_filter(opts, flt, &mut lowered, &names) {
            Ok(_) => Status::Filter,
            Err(why) => Status::Rejected(why),
        };
        reports.push(RuleReport {
            path: path.clone(),
            id: flt.id.clone().unwrap_or_else(|| "-".into()),
            title: flt.title.clone(),
            status,
            notes: Vec::new(),
        });
    }
    let detections: Vec<(String, Option<String>)> =
        lowered.iter().map(|l| (l.meta.rule.id.clone(), l.name.clone())).collect();
    let correlation_set = super::correlation::compile(&detections, &correlations);
    for (path, c) in &correlations {
        let id = c.id.clone().or_else(|| c.name.clone()).unwrap_or_else(|| c.title.clone());
        let status = match correlation_set.rejected.iter().find(|r| r.0 == *path && r.1 == id) {
            Some(r) => Status::Rejected(r.3.clone()),
            None => Status::Correlation,
        };
        let notes = converted_notes.get(&id).cloned().into_iter().collect();
        reports.push(RuleReport { path: path.clone(), id, title: c.title.clone(), status, notes });
    }
    let mut extract = HashMap::new();
    for (rule_id, fields) in &correlation_set.needed_fields {
        let Some(l) = lowered.iter().find(|l| &l.meta.rule.id == rule_id) else { continue };
        let product = l.logsource.product.as_deref();
        let resolved: Vec<(String, Vec<FieldKey>)> =
            fields.iter().map(|f| (f.clone(), opts.mapping.resolve(product, f))).collect();
        extract.insert(rule_id.clone(), resolved);
    }
    let mut builder = MatcherBuilder::default();
    let mut unrouted = 0;
    let mut routing: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for l in &lowered {
        builder.add(l);
        let product = l.logsource.product.clone().unwrap_or_else(|| "-".into());
        let tally = routing.entry(product).or_default();
        if l.routed {
            tally.0 += 1;
        } else {
            tally.1 += 1;
            unrouted += 1;
        }
    }
    let matcher = builder.build().map_err(|e| anyhow::anyhow!("building the matcher: {e}"))?;
    if let Some(out) = lowered_out {
        out.extend(lowered);
    }
    Ok(RuleSet {
        matcher,
        version: format!("{:016x}", hasher.digest()),
        reports,
        correlations: Arc::new(correlation_set),
        extract,
        files: files.len(),
        unrouted,
        routing,
    })
}

/// (id, title, condition) of the rule documents in `text` whose id is not in `parsed`: the
/// documents a parse error belongs to.
fn unparsed_documents(text: &str, parsed: &[&str]) -> Vec<(String, String, String)> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let Ok(v) = yaml_serde::Value::deserialize(doc) else { break };
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
        if v.get("detection").is_none() || parsed.contains(&get("id").as_str()) {
            continue;
        }
        let condition = match v.get("detection").and_then(|d| d.get("condition")) {
            Some(yaml_serde::Value::String(c)) => c.clone(),
            Some(yaml_serde::Value::Sequence(cs)) => {
                cs.iter().filter_map(|c| c.as_str()).collect::<Vec<_>>().join(" / ")
            }
            _ => String::new(),
        };
        out.push((get("id"), get("title"), condition));
    }
    out
}

/// A one-line reason for a document the parser refused, naming the construct when known.
fn parse_failure(error: &str, condition: &str) -> String {
    let one_line = error.split_whitespace().collect::<Vec<_>>().join(" ");
    if condition.contains('|') || condition.contains(" near ") {
        let why = if condition.contains("near") {
            "`near` has no exact Sigma 2 equivalent here (each selection would have to be a rule of its own in a \
             temporal correlation)"
        } else {
            "only `count()`, `count(field)`, `sum(field)` and `avg(field)` [by field] compared with a number, with a \
             `timeframe`, convert to a Sigma 2 correlation (this one has no timeframe or another function)"
        };
        return format!("condition `{condition}` uses a Sigma 1 aggregation: {why}; write it as a correlation rule");
    }
    if !condition.is_empty() && one_line.starts_with("Condition") {
        return format!("cannot parse condition `{condition}`: {one_line}");
    }
    format!("cannot parse: {one_line}")
}

fn rejected(path: &str, id: &str, title: &str, why: String) -> RuleReport {
    RuleReport {
        path: path.to_string(),
        id: id.to_string(),
        title: title.to_string(),
        status: Status::Rejected(why),
        notes: Vec::new(),
    }
}

/// Paths in reports relative to the working directory when below it.
fn short_path(p: &str) -> String {
    let path = Path::new(p);
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.to_string())
}
