//! Where Ward persists things (docs/architecture.md §4, §5): checkpoints and Parquet files, on a
//! local (or shared) filesystem or in an object store (S3 and S3-compatible stores, GCS, Azure
//! Blob), chosen by location: a path, `file:///path`, `s3://bucket/prefix`, `gs://…`, `az://…`.
//!
//! A [`Store`] is a flat namespace of keys (`/`-separated, relative to the location) with the
//! few operations Ward's commit protocols need, the same on every backend:
//! - `put` (whole object, atomic), `get`, `list` (everything under a directory), `delete`;
//! - `create`: put only if absent (S3's `If-None-Match: *`, a hard link on a filesystem), so
//!   two writers can never both create the same key: a checkpoint's manifest;
//! - `rename` (a rename on a filesystem, copy + delete in an object store) and `upload` (a
//!   local file into the store), for files that stay hidden until their checkpoint commits.
//!
//! Object stores go through Apache Arrow's `object_store` crate ([`remote`]); credentials and
//! endpoints come from the standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, web-identity
//! tokens) and [`StorageOptions`], never from a spec. Requests that fail for a reason that can
//! pass (timeouts, 5xx, a refused connection) are retried with backoff within a budget; while
//! they are, the caller (a worker) waits, which back-pressures the pipeline.

mod local;
mod remote;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

pub use local::LocalStore;
pub use remote::RemoteStore;

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the store's location.
    pub key: String,
    pub size: u64,
}

/// What [`Store::create`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Another writer created the key first (its content may differ).
    Exists,
}

/// A place where Ward persists objects (see the module docs). Calls block; they are made from
/// worker threads at checkpoint boundaries and from start-up and recovery code.
pub trait Store: Send + Sync {
    /// The location, for messages (never with credentials).
    fn location(&self) -> &str;
    /// The directory when the store is a local filesystem (writers can then write in place).
    fn local_root(&self) -> Option<&Path>;
    fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// Puts `bytes` at a key no other write ever uses (a checkpoint part: named by its writer
    /// and a sequence number). It is durable once [`Store::sync_dir`] of its directory has
    /// returned; until then a crash may lose it or leave it partial. Lets a checkpoint make
    /// all of its parts' names durable at once instead of one part at a time.
    fn put_new(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.put(key, bytes)
    }
    /// Makes what [`Store::put_new`] wrote under the directory `dir` durable.
    fn sync_dir(&self, _dir: &str) -> anyhow::Result<()> {
        Ok(())
    }
    /// Puts `bytes` at `key` unless something is there already.
    fn create(&self, key: &str, bytes: &[u8]) -> anyhow::Result<Created>;
    /// `None` when absent.
    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
    fn exists(&self, key: &str) -> anyhow::Result<bool>;
    /// Every object under the directory `dir` (`""`: everything), sorted by key.
    fn list(&self, dir: &str) -> anyhow::Result<Vec<Entry>>;
    /// Removes `key`; absent is fine.
    fn delete(&self, key: &str) -> anyhow::Result<()>;
    /// Moves `from` to `to` (replacing it); `false` when `from` was absent.
    fn rename(&self, from: &str, to: &str) -> anyhow::Result<bool>;
    /// Moves the local file `path` into the store at `key` (large files in parts).
    fn upload(&self, path: &Path, key: &str) -> anyhow::Result<()>;
    /// Counts this store's requests in `ward_storage_*` labelled `store=role` (object stores;
    /// the first call wins).
    fn attach_metrics(&self, _families: &crate::metrics::Families, _role: &str) {}
}

/// `settings.storage` in a spec: how object-store locations are reached. Credentials are not
/// here: they come from the environment (see the README's "Object storage").
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageOptions {
    /// Endpoint of an S3-compatible store (`https://minio.example:9000`); default: AWS, or
    /// `AWS_ENDPOINT_URL`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (default: `AWS_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint that is not on this host's loopback (off: TLS is required
    /// beyond loopback). `AWS_ALLOW_HTTP=true` also allows it.
    #[serde(default)]
    pub allow_http: bool,
    /// Address buckets as `bucket.endpoint` instead of `endpoint/bucket` (path style, what
    /// S3-compatible stores expect, is the default).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// How long one request may take before it is retried.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// How long a failing operation is retried (with backoff) before the run stops with an
    /// error; the pipeline waits meanwhile, and a restart resumes from the last checkpoint.
    #[serde(default = "default_retry_budget", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_budget: Duration,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_budget() -> Duration {
    Duration::from_secs(60)
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            endpoint: None,
            region: None,
            allow_http: false,
            virtual_hosted_style: false,
            request_timeout: default_request_timeout(),
            retry_budget: default_retry_budget(),
        }
    }
}

/// A token unique to this process start, in the names of objects it writes before they are
/// committed (checkpoint parts, hidden Parquet files): two processes never write the same
/// uncommitted object, even when they wrongly share a location.
pub fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_i64(chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default());
        format!("{:016x}", h.finish())
    })
}

/// Whether `location` names an object store (`scheme://…` other than `file://`).
pub fn is_remote(location: &str) -> bool {
    location.split_once("://").is_some_and(|(scheme, _)| scheme != "file" && !scheme.contains('/'))
}

/// The schemes of object stores Ward can open.
pub const REMOTE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss"];

/// Checks a location without opening it: a path, `file://`, or a supported object-store URL
/// with a bucket. For spec validation (no network).
pub fn check_location(location: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!location.is_empty(), "the location is empty");
    if !is_remote(location) {
        return Ok(());
    }
    // Userinfo is never echoed: it may hold a secret.
    let shown = match location.split_once("://") {
        Some((scheme, rest)) => {
            let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
            match authority.rfind('@') {
                Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
                None => location.to_string(),
            }
        }
        None => location.to_string(),
    };
    let url = url::Url::parse(location).map_err(|e| anyhow::anyhow!("`{shown}`: not a URL: {e}"))?;
    anyhow::ensure!(
        url.password().is_none() && url.username().is_empty(),
        "`{shown}`: credentials do not belong in a URL (use the environment)"
    );
    let location = shown.as_str();
    anyhow::ensure!(
        REMOTE_SCHEMES.contains(&url.scheme()),
        "`{location}`: unsupported scheme `{}` (a path, file://, {})",
        url.scheme(),
        REMOTE_SCHEMES.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ")
    );
    anyhow::ensure!(url.host_str().is_some_and(|h| !h.is_empty()), "`{location}`: no bucket");
    Ok(())
}

/// Opens `location` (relative paths against `base`). `role` labels the store's metrics
/// (`checkpoint`, or a sink's id).
pub fn open(
    location: &str,
    base: &Path,
    options: &StorageOptions,
    metrics: Option<&crate::metrics::Families>,
    role: &str,
) -> anyhow::Result<Arc<dyn Store>> {
    check_location(location)?;
    if is_remote(location) {
        let store = RemoteStore::open(location, options)?;
        if let Some(f) = metrics {
            store.attach_metrics(f, role);
        }
        return Ok(Arc::new(store));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    let path = PathBuf::from(path);
    let path = if path.is_absolute() { path } else { base.join(path) };
    Ok(Arc::new(LocalStore::new(path)))
}

/// `ward_storage_*`: requests, errors, latency and bytes of one store, by operation.
#[derive(Clone)]
pub struct StorageMetrics {
    requests: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
    retries: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
    bytes: prometheus::IntCounterVec,
    role: String,
}

impl StorageMetrics {
    pub fn new(f: &crate::metrics::Families, role: &str) -> StorageMetrics {
        StorageMetrics {
            requests: f.counter_vec(
                "ward_storage_requests_total",
                "Object-store operations, by store and operation",
                &["store", "op"],
            ),
            errors: f.counter_vec(
                "ward_storage_errors_total",
                "Object-store operations that failed (each failed attempt), by store and operation",
                &["store", "op"],
            ),
            retries: f.counter_vec(
                "ward_storage_retries_total",
                "Object-store operations retried after a failure that can pass",
                &["store", "op"],
            ),
            seconds: f.histogram_vec(
                "ward_storage_request_duration_seconds",
                "Time an object-store operation took, retries included",
                &["store", "op"],
                prometheus::exponential_buckets(0.001, 4.0, 9).expect("valid buckets"),
            ),
            bytes: f.counter_vec(
                "ward_storage_bytes_total",
                "Bytes written to (out) and read from (in) an object store",
                &["store", "direction"],
            ),
            role: role.to_string(),
        }
    }

    fn observe(&self, op: &str, seconds: f64, failed_attempts: u64, ok: bool) {
        self.requests.with_label_values(&[&self.role, op]).inc();
        self.seconds.with_label_values(&[&self.role, op]).observe(seconds);
        let errors = failed_attempts + u64::from(!ok);
        if errors > 0 {
            self.errors.with_label_values(&[&self.role, op]).inc_by(errors);
        }
        if failed_attempts > 0 {
            self.retries.with_label_values(&[&self.role, op]).inc_by(failed_attempts);
        }
    }

    fn bytes(&self, direction: &str, n: usize) {
        self.bytes.with_label_values(&[&self.role, direction]).inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_checked_without_the_network() {
        assert!(!is_remote("/var/lib/ward") && !is_remote("file:///x") && !is_remote("rel/dir"));
        assert!(is_remote("s3://bucket/prefix") && is_remote("gs://b"));
        check_location("s3://bucket/checkpoints").unwrap();
        check_location("/data/chk").unwrap();
        let e = check_location("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme `ftp`"), "{e}");
        let e = check_location("s3:///nobucket").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = check_location("s3://key:secret@bucket/x").unwrap_err().to_string();
        assert!(e.contains("credentials do not belong") && !e.contains("secret@"), "{e}");
    }
}
