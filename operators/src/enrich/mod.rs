//! The `enrich` operator: threat-intel matches, GeoIP/ASN, asset inventory and a risk score.
//! Its files are reloaded when they change, without a restart, through the engine's reload
//! handle: every worker switches to the new data at the same epoch, so outputs stay
//! deterministic across a reload.

pub mod ti;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{EventBatch, Heap, Key, Slot, Value};
use ward_engine::component::{Operator, OperatorFactory, OperatorOutput, StreamKind, WorkerContext};
use ward_engine::contexts::Contexts;
use ward_engine::fields::{ids, FieldId};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::reload::{ReloadHandle, ReloadSpec, Versioned};
use ward_engine::resources::Resources;

/// One threat-intel file.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreatIntelFile {
    /// Path relative to the spec: one indicator per line, optional feed name after a comma.
    pub path: String,
    /// Feed name for lines that give none (default: the file name).
    #[serde(default)]
    pub feed: Option<String>,
}

/// Risk score weights. Score = base + TI hit + risky destination port + large transfer from
/// an ephemeral port + asset criticality, clamped to 0..=100.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RiskWeights {
    pub base: i64,
    pub ti_hit: i64,
    pub risky_ports: Vec<u16>,
    pub risky_port: i64,
    /// Bytes (source + destination) from which a transfer counts as large.
    pub large_transfer_bytes: i64,
    pub large_transfer: i64,
    /// Source ports from here up are ephemeral.
    pub ephemeral_port_min: u16,
}

impl Default for RiskWeights {
    fn default() -> Self {
        RiskWeights {
            base: 10,
            ti_hit: 60,
            risky_ports: vec![23, 445, 1433, 3389],
            risky_port: 10,
            large_transfer_bytes: 10_000_000,
            large_transfer: 10,
            ephemeral_port_min: 49152,
        }
    }
}

/// Enrich events with threat intel, GeoIP/ASN, asset inventory and a risk score.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    #[serde(default)]
    pub threat_intel: Vec<ThreatIntelFile>,
    /// MaxMind City (or Country) database, `.mmdb`.
    #[serde(default)]
    pub geoip: Option<String>,
    /// MaxMind ASN database, `.mmdb`.
    #[serde(default)]
    pub asn: Option<String>,
    /// Asset inventory CSV with header `host,criticality,owner,tags` (tags `;`-separated).
    #[serde(default)]
    pub assets: Option<String>,
    #[serde(default)]
    pub risk: RiskWeights,
    /// Reload the files when they change (default true).
    #[serde(default = "yes")]
    pub watch: bool,
}

fn yes() -> bool {
    true
}

impl ComponentConfig for EnrichConfig {
    const TYPE: &'static str = "enrich";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str = "Add threat-intel matches, GeoIP/ASN, asset data and a risk score";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Events];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Events);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        let data = self.handle(ctx.component_id, ctx.resources, ctx.contexts)?;
        data.register_reload_route(ctx.admin, "/enrich/reload");
        let h = data.clone();
        ctx.admin.register("GET", "/enrich", ctx.component_id, Arc::new(move |_| (200, describe(&h))));
        Ok(Built::Operator(Arc::new(EnrichFactory { data, risk: Arc::new(self.risk) })))
    }
}

impl EnrichConfig {
    /// Loads the files and wraps them in a reload handle (watching them when `watch`),
    /// registered with the pipeline's `contexts`.
    pub fn handle(
        &self,
        component: &str,
        resources: &Resources,
        contexts: &Contexts,
    ) -> anyhow::Result<Arc<EnrichHandle>> {
        let mut paths: Vec<String> = self.threat_intel.iter().map(|t| t.path.clone()).collect();
        paths.extend(self.geoip.iter().chain(&self.asn).chain(&self.assets).cloned());
        let config = self.clone();
        let spec = ReloadSpec {
            component: component.to_string(),
            what: "enrichment files",
            resources: resources.clone(),
            paths,
            watch: self.watch,
            load: Box::new(move |res, _running| {
                EnrichData::load(&config, res).map_err(|e| vec![serde_json::json!({ "reason": format!("{e:#}") })])
            }),
            summary: Box::new(EnrichData::summary),
            // The version (a hash of every file) is the component's `ward_ruleset_info` and goes
            // into every checkpoint's manifest with the detectors' rule sets; checkpoints keep
            // the files of the versions in effect (see `contexts`).
            publish: Box::new(|m, previous, new| m.set_ruleset_version(previous.map(|p| p.version()), new.version())),
        };
        ReloadHandle::load(spec, contexts)
    }
}

/// The enrichment data of one enrich component, shared by its worker instances.
pub type EnrichHandle = ReloadHandle<EnrichData>;

fn describe(h: &EnrichHandle) -> serde_json::Value {
    let (since, data) = h.current_since();
    let mut out = data.summary();
    out.insert("component".into(), h.component().into());
    out.insert("version".into(), data.version.clone().into());
    out.insert("since_epoch".into(), since.into());
    serde_json::Value::Object(out)
}

#[derive(Clone, Debug)]
pub struct Asset {
    pub criticality: i64,
    pub owner: String,
    pub tags: String,
}

/// Everything enrich reads from files; rebuilt as a whole on any change.
pub struct EnrichData {
    pub ti: ti::TiIndex,
    pub geo: Option<maxminddb::Reader<Vec<u8>>>,
    pub asn: Option<maxminddb::Reader<Vec<u8>>>,
    pub assets: HashMap<String, Asset>,
    /// Hash of every file's path and content: a reload that reads the same bytes changes nothing.
    pub version: String,
}

impl Versioned for EnrichData {
    fn version(&self) -> &str {
        &self.version
    }
}

impl EnrichData {
    pub fn load(config: &EnrichConfig, res: &Resources) -> anyhow::Result<EnrichData> {
        let hash = std::cell::RefCell::new(xxhash_rust::xxh3::Xxh3::new());
        let read = |path: &str| -> anyhow::Result<Vec<u8>> {
            let bytes = res.read(path)?;
            let mut h = hash.borrow_mut();
            h.update(path.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
            Ok(bytes)
        };
        let read_string = |path: &str| -> anyhow::Result<String> {
            String::from_utf8(read(path)?).map_err(|_| anyhow::anyhow!("{path}: not UTF-8 text"))
        };
        let mut index = ti::TiIndex::default();
        for f in &config.threat_intel {
            let text = read_string(&f.path)?;
            let default_feed = f.feed.clone().unwrap_or_else(|| {
                std::path::Path::new(&f.path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            });
            index.add_file(&text, &default_feed, &f.path).map_err(|e| anyhow::anyhow!(e))?;
        }
        let mmdb = |p: &Option<String>| -> anyhow::Result<Option<maxminddb::Reader<Vec<u8>>>> {
            match p {
                None => Ok(None),
                Some(p) => Ok(Some(maxminddb::Reader::from_source(read(p)?).map_err(|e| anyhow::anyhow!("{p}: {e}"))?)),
            }
        };
        let mut assets = HashMap::new();
        if let Some(p) = &config.assets {
            let text = read_string(p)?;
            let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
            let headers = rdr.headers().map_err(|e| anyhow::anyhow!("{p}: {e}"))?.clone();
            let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
            let host = col("host").ok_or_else(|| anyhow::anyhow!("{p}: no `host` column"))?;
            let crit = col("criticality").ok_or_else(|| anyhow::anyhow!("{p}: no `criticality` column"))?;
            let (owner, tags) = (col("owner"), col("tags"));
            for (n, rec) in rdr.records().enumerate() {
                let rec = rec.map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
                let criticality: i64 = rec
                    .get(crit)
                    .unwrap_or("")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{p}:{}: criticality must be an integer", n + 2))?;
                assets.insert(
                    rec.get(host).unwrap_or("").to_ascii_lowercase(),
                    Asset {
                        criticality,
                        owner: owner.and_then(|i| rec.get(i)).unwrap_or("").to_string(),
                        tags: tags.and_then(|i| rec.get(i)).unwrap_or("").replace(';', ","),
                    },
                );
            }
        }
        let (geo, asn) = (mmdb(&config.geoip)?, mmdb(&config.asn)?);
        let version = format!("{:016x}", hash.borrow().digest());
        Ok(EnrichData { ti: index, geo, asn, assets, version })
    }

    /// Sizes of what is loaded, for `GET /enrich` and the reload answer.
    pub fn summary(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("indicators".into(), self.ti.len().into());
        m.insert("assets".into(), self.assets.len().into());
        m.insert("geoip".into(), self.geo.is_some().into());
        m.insert("asn".into(), self.asn.is_some().into());
        m
    }
}

struct EnrichFactory {
    data: Arc<EnrichHandle>,
    risk: Arc<RiskWeights>,
}

impl OperatorFactory for EnrichFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Operator>> {
        // The first worker connects the handle to the run's clock and starts the file watcher.
        self.data.start(ctx);
        Ok(Box::new(Enricher::new(self.data.clone(), (*self.risk).clone())))
    }
}

pub struct Enricher {
    data: Arc<EnrichHandle>,
    risk: Arc<RiskWeights>,
    spare: Vec<Slot>,
    /// Heap bytes added per row in the last batch (reserved at once for the next).
    heap_per_row: usize,
    /// Slots per row in the last batch's output (likewise).
    slots_per_row: usize,
    scratch: String,
}

impl Enricher {
    pub fn new(data: Arc<EnrichHandle>, risk: RiskWeights) -> Self {
        Enricher {
            data,
            risk: Arc::new(risk),
            spare: Vec::new(),
            scratch: String::new(),
            heap_per_row: 0,
            slots_per_row: 0,
        }
    }
}

/// Field values enrich looks at, read once per row.
#[derive(Default)]
struct Seen {
    src_ip: Option<IpAddr>,
    dst_ip: Option<IpAddr>,
    src_port: Option<i64>,
    dst_port: Option<i64>,
    bytes: i64,
    host: Option<usize>,
}

const DOMAIN_FIELDS: [FieldId; 4] =
    [ids::DESTINATION_DOMAIN, ids::DNS_QUESTION_NAME, ids::URL_DOMAIN, ids::SOURCE_DOMAIN];
const HASH_FIELDS: [FieldId; 4] =
    [ids::FILE_HASH_SHA256, ids::FILE_HASH_SHA1, ids::FILE_HASH_MD5, ids::PROCESS_HASH_SHA256];

impl Operator for Enricher {
    fn process(&mut self, mut batch: EventBatch, epoch: u64, out: &mut OperatorOutput) {
        let data = self.data.for_epoch(epoch);
        let w = &*self.risk;
        let need = (batch.slots().len() + batch.len() * 3).max(batch.len() * self.slots_per_row);
        let mut slots = ward_engine::batch::slots_with_room(std::mem::take(&mut self.spare), need);
        let parts = batch.parts();
        let (raw, mut heap, batch_slots, rows) = (parts.raw, parts.heap, parts.slots, parts.rows);
        let heap_before = heap.len();
        heap.reserve(rows.len() * self.heap_per_row);
        for row in rows.iter_mut() {
            let old = &batch_slots[row.slots_start as usize..row.slots_end as usize];
            let start = slots.len();
            slots.extend_from_slice(old);
            let mut seen = Seen::default();
            let mut hit: Option<(ti::IndicatorKind, String, String)> = None;
            for (i, s) in old.iter().enumerate() {
                let Key::Core(f) = s.key else { continue };
                let b = heap.bytes(raw);
                match (f, s.value) {
                    (ids::SOURCE_IP, Value::Ip(r)) => seen.src_ip = b.ip(r),
                    (ids::DESTINATION_IP, Value::Ip(r)) => seen.dst_ip = b.ip(r),
                    (ids::SOURCE_PORT, Value::Int(p)) => seen.src_port = Some(p),
                    (ids::DESTINATION_PORT, Value::Int(p)) => seen.dst_port = Some(p),
                    (ids::SOURCE_BYTES | ids::DESTINATION_BYTES | ids::NETWORK_BYTES, Value::Int(n)) => seen.bytes += n,
                    (ids::HOST_NAME, Value::Str(_)) => seen.host = Some(i),
                    (f, Value::Str(r)) if hit.is_none() && DOMAIN_FIELDS.contains(&f) => {
                        self.scratch.clear();
                        self.scratch.push_str(b.str(r));
                        self.scratch.make_ascii_lowercase();
                        if let Some(h) = data.ti.domain(&self.scratch) {
                            hit = Some((h.kind, self.scratch.clone(), h.feed.to_string()));
                        }
                    }
                    (f, Value::Str(r)) if hit.is_none() && HASH_FIELDS.contains(&f) => {
                        self.scratch.clear();
                        self.scratch.push_str(b.str(r));
                        self.scratch.make_ascii_lowercase();
                        if let Some(h) = data.ti.hash(&self.scratch) {
                            hit = Some((h.kind, self.scratch.clone(), h.feed.to_string()));
                        }
                    }
                    (ids::URL_FULL, Value::Str(r)) if hit.is_none() => {
                        if let Some(h) = data.ti.url(b.str(r)) {
                            hit = Some((h.kind, b.str(r).to_string(), h.feed.to_string()));
                        }
                    }
                    _ => {}
                }
            }
            if hit.is_none() {
                for ip in [seen.src_ip, seen.dst_ip].into_iter().flatten() {
                    if let Some(h) = data.ti.ip(ip) {
                        hit = Some((h.kind, ip.to_string(), h.feed.to_string()));
                        break;
                    }
                }
            }
            let push_str = |slots: &mut Vec<Slot>, heap: &mut Heap<'_>, f: FieldId, s: &str| {
                let r = heap.push_str(s);
                slots.push(Slot { key: Key::Core(f), value: Value::Str(r) });
            };
            let ti_hit = hit.is_some();
            if let Some((kind, value, feed)) = hit {
                let kind =
                    if kind == ti::IndicatorKind::Ip && value.contains(':') { "ipv6-addr" } else { kind.as_str() };
                push_str(&mut slots, &mut heap, ids::THREAT_INDICATOR_TYPE, kind);
                push_str(&mut slots, &mut heap, ids::THREAT_INDICATOR_MATCHED, &value);
                push_str(&mut slots, &mut heap, ids::THREAT_FEED_NAME, &feed);
            }
            for (ip, country, city, asn, org) in [
                (seen.src_ip, ids::SOURCE_GEO_COUNTRY, ids::SOURCE_GEO_CITY, ids::SOURCE_AS_NUMBER, ids::SOURCE_AS_ORG),
                (
                    seen.dst_ip,
                    ids::DESTINATION_GEO_COUNTRY,
                    ids::DESTINATION_GEO_CITY,
                    ids::DESTINATION_AS_NUMBER,
                    ids::DESTINATION_AS_ORG,
                ),
            ] {
                let Some(ip) = ip else { continue };
                if let Some(geo) = &data.geo {
                    if let Ok(Some(c)) = geo.lookup(ip).and_then(|r| r.decode::<maxminddb::geoip2::City>()) {
                        if let Some(cc) = c.country.iso_code {
                            push_str(&mut slots, &mut heap, country, cc);
                        }
                        if let Some(name) = c.city.names.english {
                            push_str(&mut slots, &mut heap, city, name);
                        }
                    }
                }
                if let Some(db) = &data.asn {
                    if let Ok(Some(a)) = db.lookup(ip).and_then(|r| r.decode::<maxminddb::geoip2::Asn>()) {
                        if let Some(n) = a.autonomous_system_number {
                            slots.push(Slot { key: Key::Core(asn), value: Value::Int(n as i64) });
                        }
                        if let Some(o) = a.autonomous_system_organization {
                            push_str(&mut slots, &mut heap, org, o);
                        }
                    }
                }
            }
            let mut criticality = 0;
            if let (Some(i), false) = (seen.host, data.assets.is_empty()) {
                let Value::Str(r) = old[i].value else { unreachable!("matched as a string") };
                self.scratch.clear();
                self.scratch.push_str(heap.bytes(raw).str(r));
                self.scratch.make_ascii_lowercase();
                if let Some(a) = data.assets.get(self.scratch.as_str()) {
                    criticality = a.criticality;
                    slots.push(Slot { key: Key::Core(ids::ASSET_CRITICALITY), value: Value::Int(a.criticality) });
                    if !a.owner.is_empty() {
                        push_str(&mut slots, &mut heap, ids::ASSET_OWNER, &a.owner);
                    }
                    if !a.tags.is_empty() {
                        push_str(&mut slots, &mut heap, ids::ASSET_TAGS, &a.tags);
                    }
                }
            }
            let mut score = w.base + criticality;
            if ti_hit {
                score += w.ti_hit;
            }
            if seen.dst_port.is_some_and(|p| w.risky_ports.iter().any(|r| *r as i64 == p)) {
                score += w.risky_port;
            }
            if seen.bytes >= w.large_transfer_bytes && seen.src_port.is_some_and(|p| p >= w.ephemeral_port_min as i64) {
                score += w.large_transfer;
            }
            slots.push(Slot { key: Key::Core(ids::RISK_SCORE), value: Value::Int(score.clamp(0, 100)) });
            row.slots_start = start as u32;
            row.slots_end = slots.len() as u32;
        }
        self.heap_per_row = (heap.len() - heap_before).div_ceil(rows.len().max(1));
        self.slots_per_row = slots.len().div_ceil(rows.len().max(1));
        self.spare = std::mem::replace(batch_slots, slots);
        out.events.push(batch);
    }
}

#[cfg(test)]
mod tests;
