//! Records read back from where the sinks put them, for tools that compare runs (`ward hunt
//! --diff`): the JSON records of a ClickHouse table's `record` column, and the values of a
//! Kafka topic up to its end. Each record goes to a callback, so memory stays flat.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A table on a ClickHouse server, as `clickhouse://[user@]host:port/database/table` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseTable {
    /// The HTTP endpoint (`http://host:port`).
    pub url: String,
    pub user: Option<String>,
    pub database: String,
    pub table: Option<String>,
}

impl ClickHouseTable {
    /// Parses `clickhouse://[user@]host[:port]/database[/table]` (port 8123 by default).
    pub fn parse(location: &str) -> anyhow::Result<ClickHouseTable> {
        let rest = location
            .strip_prefix("clickhouse://")
            .ok_or_else(|| anyhow::anyhow!("`{location}`: not a clickhouse:// location"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        anyhow::ensure!(!host.is_empty(), "`{location}`: no host (clickhouse://host:8123/database/table)");
        let host = if host.contains(':') { host.to_string() } else { format!("{host}:8123") };
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let database = parts.next().unwrap_or("default").to_string();
        let table = parts.next().map(str::to_string);
        anyhow::ensure!(parts.next().is_none(), "`{location}`: more than a database and a table after the host");
        Ok(ClickHouseTable { url: format!("http://{host}"), user, database, table })
    }

    fn client(&self, password: Option<&str>) -> clickhouse::Client {
        let mut c = clickhouse::Client::default().with_url(&self.url).with_database(&self.database);
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = password {
            c = c.with_password(p);
        }
        c
    }

    /// Every value of `column` (text) of the table's rows that satisfy `condition` (SQL).
    pub fn each_text(
        &self,
        password: Option<&str>,
        column: &str,
        condition: &str,
        mut each: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let table = self.table.as_deref().ok_or_else(|| anyhow::anyhow!("{}: no table named", self.url))?;
        let shown = format!("{}.{table} on {}", self.database, self.url);
        let sql = format!("SELECT {column} FROM `{}`.`{table}` WHERE {condition}", self.database);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut cursor = self
            .client(password)
            .query(&sql)
            .fetch_bytes("JSONEachRow")
            .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        let mut line = Vec::new();
        let mut text = |bytes: &[u8]| -> anyhow::Result<()> {
            // {"column": "..."}: one string value per row.
            let row: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)?;
            match row.into_iter().next() {
                Some((_, serde_json::Value::String(s))) => each(&s),
                _ => anyhow::bail!("{shown}: `{column}` is not text"),
            }
        };
        while let Some(chunk) = rt.block_on(cursor.next()).map_err(|e| anyhow::anyhow!("{shown}: {e}"))? {
            let mut rest = &chunk[..];
            while let Some(i) = memchr::memchr(b'\n', rest) {
                line.extend_from_slice(&rest[..i]);
                if !line.is_empty() {
                    text(&line)?;
                }
                line.clear();
                rest = &rest[i + 1..];
            }
            line.extend_from_slice(rest);
        }
        if !line.is_empty() {
            text(&line)?;
        }
        Ok(())
    }
}

/// Every committed record value of `topic` on `brokers`, from the beginning to the end the
/// topic had when reading started.
pub fn each_kafka_value(
    brokers: &str,
    topic: &str,
    mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ward-readback")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| anyhow::anyhow!("kafka consumer for {brokers}: {e}"))?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| anyhow::anyhow!("kafka metadata of `{topic}` on {brokers}: {e}"))?;
    let partitions: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!partitions.is_empty(), "kafka topic `{topic}` on {brokers} does not exist");
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| anyhow::anyhow!("kafka watermarks of {topic}/{p}: {e}"))?;
        ends.push((*p, high));
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl).map_err(|e| anyhow::anyhow!("kafka assign: {e}"))?;
    // Done when nothing is waiting and every partition is past its end at start (transaction
    // markers take offsets too); a topic quiet for `timeout` ends the read whatever it says.
    let mut quiet = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet = Instant::now();
                if let Some(v) = m.payload() {
                    each(v)?;
                }
            }
            Some(Err(e)) => anyhow::bail!("kafka: reading `{topic}`: {e}"),
            None => {
                let position = consumer.position().map_err(|e| anyhow::anyhow!("kafka position: {e}"))?;
                let past = ends.iter().all(|(p, end)| {
                    *end == 0
                        || matches!(position.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *end)
                });
                if past || quiet.elapsed() >= timeout {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_locations_name_server_database_and_table() {
        let t = ClickHouseTable::parse("clickhouse://ward@10.0.0.5/ward/alerts").unwrap();
        assert_eq!(t.url, "http://10.0.0.5:8123");
        assert_eq!(
            (t.user.as_deref(), t.database.as_str(), t.table.as_deref()),
            (Some("ward"), "ward", Some("alerts"))
        );
        let t = ClickHouseTable::parse("clickhouse://127.0.0.1:18123").unwrap();
        assert_eq!((t.url.as_str(), t.database.as_str(), t.table), ("http://127.0.0.1:18123", "default", None));
        assert!(ClickHouseTable::parse("clickhouse:///x").is_err());
        assert!(ClickHouseTable::parse("clickhouse://h/a/b/c").is_err());
    }
}
