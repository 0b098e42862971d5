//! Threat-intel indicators: IPv4/IPv6 addresses and CIDRs, domains (a listed domain also
//! matches its subdomains), file hashes (MD5/SHA-1/SHA-256) and URLs.
//!
//! File format: one indicator per line, `#` comments; the kind is inferred from the value.
//! An optional second column (comma or white space) names the feed.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndicatorKind {
    Ip,
    Domain,
    Hash,
    Url,
}

impl IndicatorKind {
    /// STIX-style names, written to `threat.indicator.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorKind::Ip => "ipv4-addr",
            IndicatorKind::Domain => "domain-name",
            IndicatorKind::Hash => "file",
            IndicatorKind::Url => "url",
        }
    }
}

/// A hit: what matched and the feed that listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit<'a> {
    pub kind: IndicatorKind,
    pub feed: &'a str,
}

#[derive(Default, Debug)]
pub struct TiIndex {
    /// Sorted, non-overlapping address ranges (IPv4 mapped into IPv6 space) with feed index.
    ranges: Vec<(u128, u128, u32)>,
    domains: HashMap<String, u32>,
    hashes: HashMap<String, u32>,
    urls: HashMap<String, u32>,
    feeds: Vec<String>,
}

fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl TiIndex {
    pub fn len(&self) -> usize {
        self.ranges.len() + self.domains.len() + self.hashes.len() + self.urls.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the indicators of one file. `default_feed` names lines without a feed column.
    pub fn add_file(&mut self, text: &str, default_feed: &str, file: &str) -> Result<(), String> {
        let mut ranges = std::mem::take(&mut self.ranges);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(2, [',', ' ', '\t']);
            let value = parts.next().unwrap_or("").trim();
            let feed = parts.next().map(str::trim).filter(|f| !f.is_empty()).unwrap_or(default_feed);
            let feed_ix = match self.feeds.iter().position(|f| f == feed) {
                Some(i) => i as u32,
                None => {
                    self.feeds.push(feed.to_string());
                    (self.feeds.len() - 1) as u32
                }
            };
            let at = || format!("{file}:{}: ", n + 1);
            if let Ok(net) = value.parse::<IpNet>() {
                let (lo, hi) = match net {
                    IpNet::V4(v4) => (ip_key(IpAddr::V4(v4.network())), ip_key(IpAddr::V4(v4.broadcast()))),
                    IpNet::V6(v6) => (ip_key(IpAddr::V6(v6.network())), ip_key(IpAddr::V6(v6.broadcast()))),
                };
                ranges.push((lo, hi, feed_ix));
            } else if let Ok(ip) = value.parse::<IpAddr>() {
                ranges.push((ip_key(ip), ip_key(ip), feed_ix));
            } else if value.contains("://") {
                self.urls.insert(normalize_url(value), feed_ix);
            } else if matches!(value.len(), 32 | 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.hashes.insert(value.to_ascii_lowercase(), feed_ix);
            } else if is_domain(value) {
                self.domains.insert(value.trim_end_matches('.').to_ascii_lowercase(), feed_ix);
            } else {
                return Err(format!("{}`{value}` is not an IP, CIDR, domain, hash or URL", at()));
            }
        }
        ranges.sort_unstable();
        // Merge overlaps so a binary search finds the one range that may hold an address.
        let mut merged: Vec<(u128, u128, u32)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.0 <= last.1.saturating_add(1) => last.1 = last.1.max(r.1),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
        Ok(())
    }

    pub fn ip(&self, ip: IpAddr) -> Option<Hit<'_>> {
        let k = ip_key(ip);
        let i = self.ranges.partition_point(|r| r.0 <= k);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (k <= r.1).then(|| Hit { kind: IndicatorKind::Ip, feed: &self.feeds[r.2 as usize] })
    }

    /// The domain or any parent domain is listed. `domain` must be lower-case.
    pub fn domain(&self, domain: &str) -> Option<Hit<'_>> {
        if self.domains.is_empty() {
            return None;
        }
        let mut d = domain.trim_end_matches('.');
        loop {
            if let Some(&f) = self.domains.get(d) {
                return Some(Hit { kind: IndicatorKind::Domain, feed: &self.feeds[f as usize] });
            }
            match d.find('.') {
                Some(i) => d = &d[i + 1..],
                None => return None,
            }
        }
    }

    /// `hash` must be lower-case hex.
    pub fn hash(&self, hash: &str) -> Option<Hit<'_>> {
        self.hashes.get(hash).map(|&f| Hit { kind: IndicatorKind::Hash, feed: &self.feeds[f as usize] })
    }

    pub fn url(&self, url: &str) -> Option<Hit<'_>> {
        if self.urls.is_empty() {
            return None;
        }
        self.urls.get(&normalize_url(url)).map(|&f| Hit { kind: IndicatorKind::Url, feed: &self.feeds[f as usize] })
    }
}

/// Scheme and host are case-insensitive; the path is not.
fn normalize_url(u: &str) -> String {
    match u.find("://") {
        Some(i) => {
            let rest = &u[i + 3..];
            let host_end = rest.find('/').unwrap_or(rest.len());
            format!("{}://{}{}", u[..i].to_ascii_lowercase(), rest[..host_end].to_ascii_lowercase(), &rest[host_end..])
        }
        None => u.to_string(),
    }
}

fn is_domain(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    s.contains('.')
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> TiIndex {
        let mut t = TiIndex::default();
        t.add_file(
            "# demo\n185.220.101.0/24,tor-exit\n45.155.205.233\n2001:db8:bad::/48\nevil-c2.example\n\
             44d88612fea8a8f36de82e1278abb02f\nhttp://Bad.Example/Payload.exe\n10.0.0.0/8 internal\n10.1.0.0/16\n",
            "demo",
            "ti.txt",
        )
        .unwrap();
        t
    }

    #[test]
    fn ip_and_cidr_v4_v6() {
        let t = index();
        assert_eq!(t.ip("185.220.101.77".parse().unwrap()).unwrap().feed, "tor-exit");
        assert_eq!(t.ip("45.155.205.233".parse().unwrap()).unwrap().feed, "demo");
        assert!(t.ip("45.155.205.234".parse().unwrap()).is_none());
        assert!(t.ip("2001:db8:bad::1".parse().unwrap()).is_some());
        assert!(t.ip("2001:db8:bae::1".parse().unwrap()).is_none());
        assert!(t.ip("10.200.3.4".parse().unwrap()).is_some(), "merged overlapping ranges");
        assert!(t.ip("11.0.0.0".parse().unwrap()).is_none());
        assert!(t.ip("0.0.0.0".parse().unwrap()).is_none());
    }

    #[test]
    fn domains_match_subdomains_only_on_label_boundaries() {
        let t = index();
        assert!(t.domain("evil-c2.example").is_some());
        assert!(t.domain("a.b.evil-c2.example").is_some());
        assert!(t.domain("notevil-c2.example").is_none());
        assert!(t.domain("example").is_none());
    }

    #[test]
    fn hashes_and_urls() {
        let t = index();
        assert_eq!(t.hash("44d88612fea8a8f36de82e1278abb02f").unwrap().kind, IndicatorKind::Hash);
        assert!(t.url("HTTP://bad.example/Payload.exe").is_some());
        assert!(t.url("http://bad.example/payload.exe").is_none(), "paths are case-sensitive");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let mut t = TiIndex::default();
        let e = t.add_file("1.2.3.4\nnot an indicator!\n", "f", "ti.txt").unwrap_err();
        assert!(e.starts_with("ti.txt:2:"), "{e}");
    }
}
