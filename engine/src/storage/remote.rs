//! A [`Store`] in an object store, through Apache Arrow's `object_store` crate: S3 and
//! S3-compatible stores (`s3://bucket/prefix`), Google Cloud Storage (`gs://`), Azure Blob
//! Storage (`az://`, `abfs[s]://`).
//!
//! Credentials and the endpoint come from the environment the way each cloud's tools read it
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` for
//! IRSA, the ECS/EKS container credentials, the instance metadata service; `GOOGLE_*`;
//! `AZURE_*`), plus the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default
//! `~/.aws/credentials`, profile `AWS_PROFILE`) when no key is in the environment. A spec only
//! says where ([`StorageOptions`]); no secret is ever put in a message: errors are scrubbed of
//! every credential value Ward knows.
//!
//! Every operation is retried with backoff (100 ms doubling to 5 s) while its failure can pass
//! (a timeout, a refused connection, a 5xx), for at most the retry budget; a missing object,
//! a failed precondition or a denied request fail at once.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use super::{Created, Entry, StorageMetrics, StorageOptions, Store};

/// Objects up to this size are uploaded in one request; larger ones in parts of this size.
const PART_BYTES: usize = 8 << 20;

pub struct RemoteStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    shown: String,
    budget: Duration,
    metrics: OnceLock<StorageMetrics>,
    /// Set when an operation spent its whole retry budget, cleared by the next success: while
    /// set, operations are tried once, so a run that is stopping for an outage stops at once
    /// instead of spending a budget per pending operation.
    exhausted: std::sync::atomic::AtomicBool,
    /// Credential values to scrub from messages.
    secrets: Vec<String>,
}

/// The runtime object-store calls run on: two threads for the whole process, entered from
/// worker threads with `block_on`.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ward-storage")
            .enable_all()
            .build()
            .expect("a tokio runtime for object storage")
    })
}

/// Runs `fut` to completion from synchronous code (also from inside another runtime).
fn block_on<F: std::future::Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| runtime().block_on(fut)).join().expect("storage call"))
    } else {
        runtime().block_on(fut)
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn env_true(key: &str) -> bool {
    env(key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// Refuses a plain-HTTP endpoint beyond loopback unless allowed; returns whether HTTP is used.
fn check_endpoint(endpoint: Option<&str>, allowed: bool) -> anyhow::Result<bool> {
    let Some(endpoint) = endpoint else { return Ok(false) };
    let url = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("storage endpoint `{endpoint}`: {e}"))?;
    anyhow::ensure!(
        url.username().is_empty() && url.password().is_none(),
        "storage endpoint: credentials do not belong in the URL (use the environment)"
    );
    match url.scheme() {
        "https" => Ok(false),
        "http" => {
            let host = url.host_str().unwrap_or_default();
            anyhow::ensure!(
                allowed || is_loopback(host),
                "storage endpoint `{endpoint}` is plain HTTP to a host that is not loopback: refused \
                 (use https, or allow it with `settings.storage.allow_http: true` or AWS_ALLOW_HTTP=true)"
            );
            Ok(true)
        }
        s => anyhow::bail!("storage endpoint `{endpoint}`: scheme `{s}` (http or https)"),
    }
}

/// Keys of a profile in an AWS shared credentials file (`[name]` sections, `key = value`).
fn profile_credentials() -> Option<(String, String, Option<String>)> {
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/credentials")))?;
    let ini = ini::Ini::load_from_file(&path).ok()?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let section = ini.section(Some(profile.as_str()))?;
    Some((
        section.get("aws_access_key_id")?.to_string(),
        section.get("aws_secret_access_key")?.to_string(),
        section.get("aws_session_token").map(str::to_string),
    ))
}

impl RemoteStore {
    pub fn open(location: &str, options: &StorageOptions) -> anyhow::Result<RemoteStore> {
        let url = url::Url::parse(location).map_err(|e| anyhow::anyhow!("`{location}`: {e}"))?;
        let bucket = url.host_str().unwrap_or_default().to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let shown = format!(
            "{}://{bucket}{}",
            url.scheme(),
            if prefix.is_empty() { String::new() } else { format!("/{prefix}") }
        );
        let client = |http: bool| {
            ClientOptions::new()
                .with_timeout(options.request_timeout)
                .with_connect_timeout(Duration::from_secs(5).min(options.request_timeout))
                .with_allow_http(http)
        };
        // Ward retries itself, within the budget (see the module docs).
        let retry = RetryConfig { max_retries: 0, ..RetryConfig::default() };
        let mut secrets: Vec<String> = [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_CLIENT_SECRET",
            "AZURE_STORAGE_SAS_KEY",
        ]
        .iter()
        .filter_map(|k| env(k))
        .collect();
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(location);
                let endpoint =
                    options.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL")).or_else(|| env("AWS_ENDPOINT"));
                let http = check_endpoint(endpoint.as_deref(), options.allow_http || env_true("AWS_ALLOW_HTTP"))?;
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) =
                    options.region.clone().or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION"))
                {
                    b = b.with_region(r);
                }
                if env("AWS_ACCESS_KEY_ID").is_none() && env("AWS_WEB_IDENTITY_TOKEN_FILE").is_none() {
                    if let Some((id, secret, token)) = profile_credentials() {
                        secrets.push(secret.clone());
                        b = b.with_access_key_id(id).with_secret_access_key(secret);
                        if let Some(t) = token {
                            secrets.push(t.clone());
                            b = b.with_token(t);
                        }
                    }
                }
                b.with_virtual_hosted_style_request(options.virtual_hosted_style)
                    .with_allow_http(http)
                    .with_client_options(client(http))
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(location)
                .with_client_options(client(false))
                .with_retry(retry)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            "az" | "abfs" | "abfss" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(location);
                let http = check_endpoint(options.endpoint.as_deref(), options.allow_http)?;
                if let Some(e) = &options.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.with_allow_http(http)
                    .with_client_options(client(http))
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            s => anyhow::bail!("`{shown}`: unsupported scheme `{s}`"),
        }
        .map_err(|e| anyhow::anyhow!("{shown}: {}", scrub(&e.to_string(), &secrets)))?;
        secrets.retain(|s| s.len() >= 4);
        Ok(RemoteStore {
            store,
            prefix,
            shown,
            budget: options.retry_budget,
            metrics: OnceLock::new(),
            exhausted: Default::default(),
            secrets,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, path: &ObjectPath) -> String {
        let full = path.as_ref();
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.prefix).map(|k| k.trim_start_matches('/')).unwrap_or(full).to_string()
        }
    }

    fn fail(&self, op: &str, key: &str, e: &object_store::Error) -> anyhow::Error {
        let hint = if denied(e) {
            " (the store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the profile or the role, and the bucket's policy)"
        } else {
            ""
        };
        anyhow::anyhow!("{}: {op} `{key}`: {}{hint}", self.shown, scrub(&e.to_string(), &self.secrets))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent.
    fn call<T, F, Fut>(&self, op: &str, key: &str, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = object_store::Result<T>> + Send,
        T: Send,
    {
        let started = Instant::now();
        let mut failed = 0u64;
        let mut backoff = Duration::from_millis(100);
        use std::sync::atomic::Ordering::Relaxed;
        let budget = if self.exhausted.load(Relaxed) { Duration::ZERO } else { self.budget };
        let result = block_on(async {
            loop {
                match attempt().await {
                    Ok(v) => {
                        self.exhausted.store(false, Relaxed);
                        return Ok(v);
                    }
                    Err(e) if !passing(&e) => return Err(e),
                    Err(e) if started.elapsed() + backoff > budget => {
                        self.exhausted.store(true, Relaxed);
                        return Err(e);
                    }
                    Err(e) => {
                        failed += 1;
                        if failed == 1 || failed.is_power_of_two() {
                            tracing::warn!(
                                "{}: {op} `{key}` failed ({}), retrying (attempt {})",
                                self.shown,
                                scrub(&e.to_string(), &self.secrets),
                                failed + 1
                            );
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        if let Some(m) = &self.metrics.get() {
            let ok = match &result {
                Ok(_) => true,
                Err(e) => matches!(e, object_store::Error::NotFound { .. } | object_store::Error::AlreadyExists { .. }),
            };
            m.observe(op, started.elapsed().as_secs_f64(), failed, ok);
        }
        result.map_err(|e| match e {
            e @ (object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }) => anyhow::Error::new(Expected(e)),
            e => self.fail(op, key, &e),
        })
    }
}

/// An outcome the caller handles (absent, already there), kept typed for `downcast_ref`.
#[derive(Debug)]
struct Expected(object_store::Error);

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for Expected {}

fn expected(e: &anyhow::Error) -> Option<&object_store::Error> {
    e.downcast_ref::<Expected>().map(|x| &x.0)
}

/// Whether the store refused the request's credentials or permissions. Some requests (a
/// listing) report a 403 as a generic error, so the answer's text is read too.
fn denied(e: &object_store::Error) -> bool {
    if matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) {
        return true;
    }
    let text = e.to_string();
    ["403 Forbidden", "401 Unauthorized", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"]
        .iter()
        .any(|m| text.contains(m))
}

/// Whether a failure can pass by itself (a retry may succeed).
fn passing(e: &object_store::Error) -> bool {
    !denied(e)
        && !matches!(
            e,
            object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. }
                | object_store::Error::UnknownConfigurationKey { .. }
        )
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

impl Store for RemoteStore {
    fn location(&self) -> &str {
        &self.shown
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        self.call("put", key, || self.store.put(&path, payload.clone()))?;
        if let Some(m) = &self.metrics.get() {
            m.bytes("out", bytes.len());
        }
        Ok(())
    }

    fn create(&self, key: &str, bytes: &[u8]) -> anyhow::Result<Created> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(bytes));
        let opts = || PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.call("create", key, || self.store.put_opts(&path, payload.clone(), opts())) {
            Ok(_) => {
                if let Some(m) = &self.metrics.get() {
                    m.bytes("out", bytes.len());
                }
                Ok(Created::Created)
            }
            Err(e) => match expected(&e) {
                Some(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    Ok(Created::Exists)
                }
                _ => Err(e),
            },
        }
    }

    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let got = self.call("get", key, || async { self.store.get(&path).await?.bytes().await });
        match got {
            Ok(b) => {
                if let Some(m) = &self.metrics.get() {
                    m.bytes("in", b.len());
                }
                Ok(Some(b.to_vec()))
            }
            Err(e) if matches!(expected(&e), Some(object_store::Error::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn exists(&self, key: &str) -> anyhow::Result<bool> {
        let path = self.path(key);
        match self.call("head", key, || self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(e) if matches!(expected(&e), Some(object_store::Error::NotFound { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &str) -> anyhow::Result<Vec<Entry>> {
        let prefix = self.path(dir.trim_end_matches('/'));
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let found = self.call("list", dir, || self.store.list(prefix.as_ref()).try_collect::<Vec<_>>());
        let mut out: Vec<Entry> = match found {
            Ok(v) => v.iter().map(|m| Entry { key: self.key_of(&m.location), size: m.size }).collect(),
            Err(e) if matches!(expected(&e), Some(object_store::Error::NotFound { .. })) => Vec::new(),
            Err(e) => return Err(e),
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key);
        match self.call("delete", key, || self.store.delete(&path)) {
            Err(e) if !matches!(expected(&e), Some(object_store::Error::NotFound { .. })) => Err(e),
            _ => Ok(()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let (f, t) = (self.path(from), self.path(to));
        match self.call("rename", from, || self.store.rename(&f, &t)) {
            Ok(()) => Ok(true),
            Err(e) if matches!(expected(&e), Some(object_store::Error::NotFound { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn attach_metrics(&self, families: &crate::metrics::Families, role: &str) {
        let _ = self.metrics.set(StorageMetrics::new(families, role));
    }

    fn upload(&self, path: &Path, key: &str) -> anyhow::Result<()> {
        let size = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?.len() as usize;
        if size <= PART_BYTES {
            let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            self.put(key, &bytes)?;
        } else {
            let target = self.path(key);
            self.call("upload", key, || async {
                use std::io::Read;
                let upload = self.store.put_multipart(&target).await?;
                let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                let mut file = std::fs::File::open(path)
                    .map_err(|e| object_store::Error::Generic { store: "file", source: Box::new(e) })?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file
                        .read(&mut buf)
                        .map_err(|e| object_store::Error::Generic { store: "file", source: Box::new(e) })?;
                    if n == 0 {
                        break;
                    }
                    writer.wait_for_capacity(4).await?;
                    writer.write(&buf[..n]);
                }
                writer.finish().await
            })?;
            if let Some(m) = &self.metrics.get() {
                m.bytes("out", size);
            }
        }
        std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_beyond_loopback_unless_allowed() {
        assert!(check_endpoint(Some("http://127.0.0.1:8333"), false).unwrap());
        assert!(check_endpoint(Some("http://[::1]:8333"), false).unwrap());
        assert!(!check_endpoint(Some("https://s3.example.com"), false).unwrap());
        let e = check_endpoint(Some("http://10.0.0.5:9000"), false).unwrap_err().to_string();
        assert!(e.contains("not loopback: refused"), "{e}");
        assert!(check_endpoint(Some("http://10.0.0.5:9000"), true).unwrap());
        let e = check_endpoint(Some("https://id:secret@s3.example.com"), false).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn messages_are_scrubbed_of_secrets() {
        let secrets = vec!["wJalrXUtnFEMI".to_string()];
        assert_eq!(scrub("sig for wJalrXUtnFEMI failed", &secrets), "sig for *** failed");
    }
}
