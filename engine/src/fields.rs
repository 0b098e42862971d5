//! ECS-lite: the typed core fields every normalized event may carry.
//!
//! The list is the single source of truth: normalize packs map into it, the Parquet sink
//! derives its columns from it, and the README's field table is generated from it
//! (`ward fields`). Anything not listed here stays in the event's extension map.

use serde::{Deserialize, Serialize};

/// The type of a core field's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// UTF-8 text.
    Str,
    /// Signed 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// true/false.
    Bool,
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp,
    /// IPv4 or IPv6 address.
    Ip,
}

/// Index of a core field in [`CORE_FIELDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FieldId(pub u16);

impl FieldId {
    pub fn name(self) -> &'static str {
        CORE_FIELDS[self.0 as usize].0
    }
    pub fn field_type(self) -> FieldType {
        CORE_FIELDS[self.0 as usize].1
    }
    pub fn description(self) -> &'static str {
        CORE_FIELDS[self.0 as usize].2
    }
    /// Looks a core field up by its dotted name.
    pub fn lookup(name: &str) -> Option<FieldId> {
        // The list is short and lookups happen at compile time of packs and rules, not per event.
        CORE_FIELDS.iter().position(|(n, _, _)| *n == name).map(|i| FieldId(i as u16))
    }
    pub fn all() -> impl Iterator<Item = FieldId> {
        (0..CORE_FIELDS.len() as u16).map(FieldId)
    }
}

use FieldType::*;

/// (name, type, description). Order is stable: it is the Parquet column order.
pub const CORE_FIELDS: &[(&str, FieldType, &str)] = &[
    ("@timestamp", Timestamp, "When the event happened (event time), UTC"),
    ("event.id", Str, "Unique id of the event as given by the source, else derived from provenance"),
    ("event.kind", Str, "event, alert, metric or state"),
    ("event.category", Str, "ECS category: authentication, process, network, file, ..."),
    ("event.type", Str, "ECS type: start, end, info, connection, protocol, ..."),
    ("event.action", Str, "What happened, in the source's words (logon-failed, process-created, ...)"),
    ("event.outcome", Str, "success, failure or unknown"),
    ("event.code", Str, "Source-specific event code (Windows EventID, FortiGate logid, ...)"),
    ("event.provider", Str, "Producer of the event (Windows provider, syslog app name)"),
    ("event.dataset", Str, "Dataset the pack assigned, e.g. windows.sysmon, linux.auth, zeek.conn"),
    ("event.module", Str, "Module family: windows, linux, zeek, fortigate, generic"),
    ("event.severity", Int, "Numeric severity as given by the source"),
    ("event.created", Timestamp, "When the source recorded the event, if different from @timestamp"),
    ("event.original", Str, "The raw record, when the pack keeps it"),
    ("log.level", Str, "Log level or syslog severity name"),
    ("log.channel", Str, "Windows event log channel (Security, Microsoft-Windows-Sysmon/Operational, ...)"),
    ("message", Str, "Free-text message"),
    ("host.name", Str, "Host name the event is about"),
    ("host.id", Str, "Stable host identifier"),
    ("host.ip", Ip, "Host address"),
    ("user.name", Str, "User name"),
    ("user.domain", Str, "User domain"),
    ("user.id", Str, "User identifier (SID, uid)"),
    ("user.target.name", Str, "User a privilege or account change applies to"),
    ("source.ip", Ip, "Source address"),
    ("source.port", Int, "Source port"),
    ("source.bytes", Int, "Bytes sent by the source"),
    ("source.domain", Str, "Source domain name"),
    ("source.geo.country_iso_code", Str, "Source country (GeoIP enrichment)"),
    ("source.geo.city_name", Str, "Source city (GeoIP enrichment)"),
    ("source.as.number", Int, "Source autonomous system number (ASN enrichment)"),
    ("source.as.organization.name", Str, "Source AS organisation (ASN enrichment)"),
    ("destination.ip", Ip, "Destination address"),
    ("destination.port", Int, "Destination port"),
    ("destination.bytes", Int, "Bytes sent by the destination"),
    ("destination.domain", Str, "Destination domain name"),
    ("destination.geo.country_iso_code", Str, "Destination country (GeoIP enrichment)"),
    ("destination.geo.city_name", Str, "Destination city (GeoIP enrichment)"),
    ("destination.as.number", Int, "Destination autonomous system number (ASN enrichment)"),
    ("destination.as.organization.name", Str, "Destination AS organisation (ASN enrichment)"),
    ("network.transport", Str, "tcp, udp, icmp, ..."),
    ("network.protocol", Str, "Application protocol: dns, http, ssh, ..."),
    ("network.direction", Str, "inbound, outbound, internal, external"),
    ("network.bytes", Int, "Total bytes in both directions"),
    ("network.packets", Int, "Total packets in both directions"),
    ("process.pid", Int, "Process id"),
    ("process.name", Str, "Process image file name"),
    ("process.executable", Str, "Full path of the process image"),
    ("process.command_line", Str, "Full command line"),
    ("process.parent.pid", Int, "Parent process id"),
    ("process.parent.name", Str, "Parent image file name"),
    ("process.parent.executable", Str, "Full path of the parent image"),
    ("process.parent.command_line", Str, "Parent command line"),
    ("process.hash.sha256", Str, "SHA-256 of the process image"),
    ("file.path", Str, "Full file path"),
    ("file.name", Str, "File name"),
    ("file.hash.md5", Str, "MD5 of the file"),
    ("file.hash.sha1", Str, "SHA-1 of the file"),
    ("file.hash.sha256", Str, "SHA-256 of the file"),
    ("url.full", Str, "Full URL"),
    ("url.domain", Str, "URL host name"),
    ("url.path", Str, "URL path"),
    ("dns.question.name", Str, "Queried name"),
    ("dns.question.type", Str, "Query type (A, AAAA, TXT, ...)"),
    ("dns.response_code", Str, "Response code (NOERROR, NXDOMAIN, ...)"),
    ("dns.answers", Str, "Answers, comma-separated"),
    ("rule.id", Str, "Id of the device rule or policy that logged the event"),
    ("rule.name", Str, "Name of the device rule or policy"),
    ("threat.indicator.type", Str, "Kind of threat-intel indicator that matched: ipv4-addr, domain-name, file, url"),
    ("threat.indicator.matched", Str, "The value that matched a threat-intel indicator"),
    ("threat.feed.name", Str, "Name of the threat-intel feed that matched"),
    ("ward.asset.criticality", Int, "Criticality of the host from the asset inventory (0-30)"),
    ("ward.asset.owner", Str, "Owner of the host from the asset inventory"),
    ("ward.asset.tags", Str, "Asset tags, comma-separated"),
    ("ward.risk_score", Int, "Risk score 0-100 from the enrich operator"),
];

/// Ids of the core fields Ward's own code reads or writes, checked against the table in a test.
pub mod ids {
    use super::FieldId;
    pub const TIMESTAMP: FieldId = FieldId(0);
    pub const EVENT_ID: FieldId = FieldId(1);
    pub const EVENT_KIND: FieldId = FieldId(2);
    pub const EVENT_DATASET: FieldId = FieldId(9);
    pub const EVENT_MODULE: FieldId = FieldId(10);
    pub const EVENT_ORIGINAL: FieldId = FieldId(13);
    pub const HOST_NAME: FieldId = FieldId(17);
    pub const USER_NAME: FieldId = FieldId(20);
    pub const SOURCE_IP: FieldId = FieldId(24);
    pub const SOURCE_PORT: FieldId = FieldId(25);
    pub const SOURCE_BYTES: FieldId = FieldId(26);
    pub const SOURCE_DOMAIN: FieldId = FieldId(27);
    pub const SOURCE_GEO_COUNTRY: FieldId = FieldId(28);
    pub const SOURCE_GEO_CITY: FieldId = FieldId(29);
    pub const SOURCE_AS_NUMBER: FieldId = FieldId(30);
    pub const SOURCE_AS_ORG: FieldId = FieldId(31);
    pub const DESTINATION_IP: FieldId = FieldId(32);
    pub const DESTINATION_PORT: FieldId = FieldId(33);
    pub const DESTINATION_BYTES: FieldId = FieldId(34);
    pub const DESTINATION_DOMAIN: FieldId = FieldId(35);
    pub const DESTINATION_GEO_COUNTRY: FieldId = FieldId(36);
    pub const DESTINATION_GEO_CITY: FieldId = FieldId(37);
    pub const DESTINATION_AS_NUMBER: FieldId = FieldId(38);
    pub const DESTINATION_AS_ORG: FieldId = FieldId(39);
    pub const NETWORK_BYTES: FieldId = FieldId(43);
    pub const PROCESS_HASH_SHA256: FieldId = FieldId(53);
    pub const FILE_HASH_MD5: FieldId = FieldId(56);
    pub const FILE_HASH_SHA1: FieldId = FieldId(57);
    pub const FILE_HASH_SHA256: FieldId = FieldId(58);
    pub const URL_FULL: FieldId = FieldId(59);
    pub const URL_DOMAIN: FieldId = FieldId(60);
    pub const DNS_QUESTION_NAME: FieldId = FieldId(62);
    pub const THREAT_INDICATOR_TYPE: FieldId = FieldId(68);
    pub const THREAT_INDICATOR_MATCHED: FieldId = FieldId(69);
    pub const THREAT_FEED_NAME: FieldId = FieldId(70);
    pub const ASSET_CRITICALITY: FieldId = FieldId(71);
    pub const ASSET_OWNER: FieldId = FieldId(72);
    pub const ASSET_TAGS: FieldId = FieldId(73);
    pub const RISK_SCORE: FieldId = FieldId(74);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ids_point_at_their_fields() {
        let checks = [
            (ids::TIMESTAMP, "@timestamp"),
            (ids::EVENT_ID, "event.id"),
            (ids::EVENT_KIND, "event.kind"),
            (ids::EVENT_DATASET, "event.dataset"),
            (ids::EVENT_MODULE, "event.module"),
            (ids::EVENT_ORIGINAL, "event.original"),
            (ids::HOST_NAME, "host.name"),
            (ids::USER_NAME, "user.name"),
            (ids::SOURCE_IP, "source.ip"),
            (ids::SOURCE_PORT, "source.port"),
            (ids::SOURCE_BYTES, "source.bytes"),
            (ids::SOURCE_DOMAIN, "source.domain"),
            (ids::SOURCE_GEO_COUNTRY, "source.geo.country_iso_code"),
            (ids::SOURCE_GEO_CITY, "source.geo.city_name"),
            (ids::SOURCE_AS_NUMBER, "source.as.number"),
            (ids::SOURCE_AS_ORG, "source.as.organization.name"),
            (ids::DESTINATION_IP, "destination.ip"),
            (ids::DESTINATION_PORT, "destination.port"),
            (ids::DESTINATION_BYTES, "destination.bytes"),
            (ids::DESTINATION_DOMAIN, "destination.domain"),
            (ids::DESTINATION_GEO_COUNTRY, "destination.geo.country_iso_code"),
            (ids::DESTINATION_GEO_CITY, "destination.geo.city_name"),
            (ids::DESTINATION_AS_NUMBER, "destination.as.number"),
            (ids::DESTINATION_AS_ORG, "destination.as.organization.name"),
            (ids::NETWORK_BYTES, "network.bytes"),
            (ids::PROCESS_HASH_SHA256, "process.hash.sha256"),
            (ids::FILE_HASH_MD5, "file.hash.md5"),
            (ids::FILE_HASH_SHA1, "file.hash.sha1"),
            (ids::FILE_HASH_SHA256, "file.hash.sha256"),
            (ids::URL_FULL, "url.full"),
            (ids::URL_DOMAIN, "url.domain"),
            (ids::DNS_QUESTION_NAME, "dns.question.name"),
            (ids::THREAT_INDICATOR_TYPE, "threat.indicator.type"),
            (ids::THREAT_INDICATOR_MATCHED, "threat.indicator.matched"),
            (ids::THREAT_FEED_NAME, "threat.feed.name"),
            (ids::ASSET_CRITICALITY, "ward.asset.criticality"),
            (ids::ASSET_OWNER, "ward.asset.owner"),
            (ids::ASSET_TAGS, "ward.asset.tags"),
            (ids::RISK_SCORE, "ward.risk_score"),
        ];
        for (id, name) in checks {
            assert_eq!(id.name(), name);
            assert_eq!(FieldId::lookup(name), Some(id));
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CORE_FIELDS.iter().map(|f| f.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CORE_FIELDS.len());
    }
}
