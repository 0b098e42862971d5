//! What the sources that read Ward's own history back (`parquet`, `clickhouse`) share: the
//! event-time range (`from`/`to`) and the projection of the fields the rules downstream need.

use ward_engine::fields::{ids, FieldId};

/// `from`/`to`: RFC 3339 or a date; milliseconds since the epoch.
pub fn parse_time(name: &str, t: &str) -> anyhow::Result<i64> {
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis());
    }
    anyhow::bail!("`{name}`: `{t}` is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a date (2026-12-01)")
}

/// Event times `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from: i64,
    pub to: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange { from: i64::MIN, to: i64::MAX };

    /// The range a source's `from` and `to` name (unbounded where absent).
    pub fn of(from: Option<&str>, to: Option<&str>) -> anyhow::Result<TimeRange> {
        let range = TimeRange {
            from: from.map(|t| parse_time("from", t)).transpose()?.unwrap_or(i64::MIN),
            to: to.map(|t| parse_time("to", t)).transpose()?.unwrap_or(i64::MAX),
        };
        anyhow::ensure!(range.from < range.to, "`from` must be before `to`");
        Ok(range)
    }

    pub fn bounded(&self) -> bool {
        *self != TimeRange::ALL
    }
    pub fn contains(&self, t: i64) -> bool {
        t >= self.from && t < self.to
    }
    /// Whether `[start, end)` can hold an event of the range.
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        start < self.to && end > self.from
    }
}

/// The provenance fields every event read back keeps (its live origin).
pub const PROVENANCE: [&str; 3] = ["ward.source", "ward.partition", "ward.offset"];

/// The fields a source decodes.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub core: Vec<FieldId>,
    /// Extension fields wanted, sorted.
    pub ext: Vec<String>,
    /// Extension fields wanted by pattern (names with `*`).
    pub ext_patterns: Vec<glob::Pattern>,
}

/// The projection for `fields`: those, plus event time and `event.id` (dedup's key).
pub fn wanted(fields: &[String]) -> Wanted {
    let mut core = vec![ids::TIMESTAMP];
    if let Some(id) = FieldId::lookup("event.id") {
        core.push(id);
    }
    let mut ext = Vec::new();
    let mut ext_patterns = Vec::new();
    for f in fields {
        if f.contains('*') {
            // A name that is no valid pattern is taken as it is.
            match glob::Pattern::new(f) {
                Ok(p) => ext_patterns.push(p),
                Err(_) => ext.push(f.clone()),
            }
            continue;
        }
        match FieldId::lookup(f) {
            Some(id) if !core.contains(&id) => core.push(id),
            Some(_) => {}
            None if !PROVENANCE.contains(&f.as_str()) => ext.push(f.clone()),
            None => {}
        }
    }
    ext.sort();
    ext.dedup();
    Wanted { core, ext, ext_patterns }
}

/// Whether the extension field `key` is wanted (every one without a projection).
pub fn ext_wanted(wanted: Option<&Wanted>, key: &str) -> bool {
    wanted.is_none_or(|w| {
        w.ext.binary_search_by(|e| e.as_str().cmp(key)).is_ok() || w.ext_patterns.iter().any(|p| p.matches(key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates_and_a_range_must_not_be_empty() {
        assert_eq!(parse_time("from", "2026-12-01").unwrap(), parse_time("from", "2026-12-01T00:00:00Z").unwrap());
        assert!(TimeRange::of(Some("2026-12-02"), Some("2026-12-01")).is_err());
        let r = TimeRange::of(Some("2026-12-01"), None).unwrap();
        assert!(r.bounded() && r.contains(i64::MAX - 1) && !r.contains(r.from - 1));
    }

    #[test]
    fn a_projection_always_keeps_time_and_id_and_sorts_extension_fields() {
        let w = wanted(&[
            "zeta".into(),
            "host.name".into(),
            "alpha".into(),
            "ward.offset".into(),
            "Event.UserData.*".into(),
        ]);
        assert_eq!(w.core[0], ids::TIMESTAMP);
        assert!(w.core.contains(&FieldId::lookup("host.name").unwrap()));
        assert_eq!(w.ext, ["alpha", "zeta"]);
        assert!(ext_wanted(Some(&w), "alpha") && !ext_wanted(Some(&w), "beta") && ext_wanted(None, "beta"));
        assert!(ext_wanted(Some(&w), "Event.UserData.Operation_TemporaryEssStarted.Consumer"));
        assert!(!ext_wanted(Some(&w), "Event.EventData.Consumer"));
    }
}
