//! Contexts: what reloadable components build from files (Sigma rule sets, correlation rules,
//! enrichment data), as versions bound to epochs and kept with the checkpoints
//! (docs/architecture.md §6).
//!
//! Every version in effect after a checkpoint's epoch is named by its manifest, and the files
//! it was built from are stored once per version, content-addressed, under `contexts/` in the
//! checkpoint store. A run that resumes rebuilds those versions from the stored files, not from
//! whatever the disk holds now, so records replayed from the checkpoint are matched and
//! enriched exactly as the first run did; files changed on disk since then take effect at a
//! fresh epoch, like a reload.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::resources::FileSet;
use crate::storage::Store;

/// Where the stored versions live in the checkpoint store.
pub const PREFIX: &str = "contexts/";

/// One version of a component's context, as a checkpoint manifest names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextVersion {
    /// The epoch it took effect (the first version listed was in effect at the checkpoint's
    /// epoch; later ones were scheduled after it).
    pub first_epoch: u64,
    pub version: String,
    /// The object holding its files, with their size and checksum.
    pub key: String,
    pub bytes: u64,
    pub xxh3: String,
}

/// Per component, the versions a manifest names.
pub type ContextNames = BTreeMap<String, Vec<ContextVersion>>;

/// A component whose versions are kept with checkpoints (a reload handle).
pub trait Context: Send + Sync {
    fn component(&self) -> &str;
    /// The versions in effect after `epoch`, oldest first: the one in effect at `epoch` and any
    /// scheduled to take effect later, with their first epochs.
    fn timeline(&self, epoch: u64) -> Vec<(u64, String)>;
    /// The files `version` was built from, while they are kept in memory.
    fn files(&self, version: &str) -> Option<Arc<FileSet>>;
    /// Whether to keep the files of versions loaded from now on (and drop those kept).
    fn keep_files(&self, keep: bool);
    /// The files of `version` are stored: they need not stay in memory.
    fn stored(&self, version: &str);
    /// Rebuilds the versions a checkpoint names from their files and installs them; `Ok(false)`
    /// when nothing changed (the files on disk built the same single version).
    fn restore(&self, versions: Vec<(u64, String, FileSet)>) -> anyhow::Result<bool>;
}

/// The contexts of one pipeline, registered while its components are built.
#[derive(Clone, Default)]
pub struct Contexts {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    members: Vec<Arc<dyn Context>>,
    /// Versions whose files are in the store (key → what a manifest says of it).
    stored: BTreeMap<String, ContextVersion>,
}

impl std::fmt::Debug for Contexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_list().entries(inner.members.iter().map(|m| m.component().to_string())).finish()
    }
}

/// The object holding the files of `component`'s `version`.
pub fn key(component: &str, version: &str) -> String {
    format!("{PREFIX}{component}/{version}.files")
}

impl Contexts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, member: Arc<dyn Context>) {
        self.lock().members.push(member);
    }

    /// This process writes no checkpoint manifests (or the run takes no checkpoints): the
    /// files of versions need not be kept.
    pub fn discard_files(&self) {
        for m in &self.lock().members {
            m.keep_files(false);
        }
    }

    /// What a manifest of checkpoint `epoch` names: every component's versions in effect after
    /// it, each stored first if it is not yet (so a manifest never names a missing object).
    pub fn record(&self, store: &dyn Store, epoch: u64) -> anyhow::Result<ContextNames> {
        let mut inner = self.lock();
        let members = inner.members.clone();
        let mut out = BTreeMap::new();
        for m in members {
            let mut versions = Vec::new();
            for (first_epoch, version) in m.timeline(epoch) {
                let key = key(m.component(), &version);
                let stored = match inner.stored.get(&key) {
                    Some(s) => s.clone(),
                    None => {
                        let files = m.files(&version).ok_or_else(|| {
                            anyhow::anyhow!("the files of `{}` version {version} are no longer at hand", m.component())
                        })?;
                        let bytes = postcard::to_stdvec(&*files)?;
                        store.put(&key, &bytes)?;
                        let s = ContextVersion {
                            first_epoch,
                            version: version.clone(),
                            key: key.clone(),
                            bytes: bytes.len() as u64,
                            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
                        };
                        inner.stored.insert(key, s.clone());
                        m.stored(&version);
                        s
                    }
                };
                versions.push(ContextVersion { first_epoch, ..stored });
            }
            out.insert(m.component().to_string(), versions);
        }
        Ok(out)
    }

    /// Removes the stored versions that none of `named` (the retained manifests' contexts)
    /// names, and forgets them; how many. Called after a manifest is written, by its writer.
    pub fn remove_unnamed<'m>(
        &self,
        store: &dyn Store,
        named: impl IntoIterator<Item = &'m ContextNames>,
    ) -> anyhow::Result<usize> {
        let removed = remove_unnamed(store, named)?;
        self.lock().stored.retain(|key, _| !removed.contains(key));
        Ok(removed.len())
    }

    /// Rebuilds every component's versions named by the manifest of checkpoint `epoch` from
    /// the stored files. A component whose versions cannot be rebuilt (its files missing from
    /// the store, or built differently by this version of Ward) keeps what the disk holds,
    /// with a warning.
    pub fn restore(&self, store: &dyn Store, named: &ContextNames, epoch: u64) -> anyhow::Result<()> {
        let members = self.lock().members.clone();
        for m in members {
            let Some(versions) = named.get(m.component()) else { continue };
            let on_disk = m.timeline(u64::MAX);
            if versions.len() == 1 && on_disk.len() == 1 && on_disk[0].1 == versions[0].version {
                self.lock().stored.insert(versions[0].key.clone(), versions[0].clone());
                continue;
            }
            let rebuilt = versions
                .iter()
                .map(|v| read_version(store, v).map(|files| (v.first_epoch, v.version.clone(), files)))
                .collect::<anyhow::Result<Vec<_>>>()
                .and_then(|files| m.restore(files));
            match rebuilt {
                Ok(_) => {
                    let mut inner = self.lock();
                    for v in versions {
                        inner.stored.insert(v.key.clone(), v.clone());
                    }
                    let newest = versions.last().map_or("", |v| v.version.as_str());
                    let disk = on_disk.last().map_or("", |v| v.1.as_str());
                    if newest == disk {
                        tracing::info!(
                            component = m.component(),
                            "restored the versions of checkpoint {epoch} ({})",
                            list(versions)
                        );
                    } else {
                        tracing::warn!(
                            component = m.component(),
                            "the files changed since checkpoint {epoch}: records replayed from it meet the versions it \
                             kept ({}); the files on disk (version {disk}) take effect at a fresh epoch",
                            list(versions)
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    component = m.component(),
                    "cannot rebuild the versions of checkpoint {epoch} ({}): {e:#}; records replayed from it use the \
                     files on disk",
                    list(versions)
                ),
            }
        }
        Ok(())
    }
}

/// Removes the stored versions in `store` that none of `named` names; their keys.
pub fn remove_unnamed<'m>(
    store: &dyn Store,
    named: impl IntoIterator<Item = &'m ContextNames>,
) -> anyhow::Result<Vec<String>> {
    let keep: BTreeSet<&str> = named.into_iter().flat_map(|m| m.values().flatten().map(|v| v.key.as_str())).collect();
    let mut removed = Vec::new();
    for e in store.list(PREFIX.trim_end_matches('/'))? {
        if !keep.contains(e.key.as_str()) {
            store.delete(&e.key)?;
            removed.push(e.key);
        }
    }
    Ok(removed)
}

fn list(versions: &[ContextVersion]) -> String {
    versions.iter().map(|v| format!("{} from epoch {}", v.version, v.first_epoch)).collect::<Vec<_>>().join(", ")
}

/// The files of a stored version, checked against what the manifest says of them.
pub fn read_version(store: &dyn Store, v: &ContextVersion) -> anyhow::Result<FileSet> {
    let shown = || format!("{}/{}", store.location(), v.key);
    let bytes = store.get(&v.key)?.ok_or_else(|| anyhow::anyhow!("{}: missing (named by the manifest)", shown()))?;
    if bytes.len() as u64 != v.bytes || format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)) != v.xxh3 {
        anyhow::bail!("{}: does not match the manifest (size or checksum)", shown());
    }
    postcard::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", shown()))
}
