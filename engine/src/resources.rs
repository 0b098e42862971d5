//! Files a pipeline depends on (packs, threat-intel lists, GeoIP databases, asset inventories):
//! resolved relative to the spec, read for the components (operators do no I/O themselves),
//! and watched so that a changed file is reloaded without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

#[derive(Clone, Debug)]
pub struct Resources {
    base: PathBuf,
}

impl Resources {
    /// Resources resolved relative to `base` (the directory holding the spec).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Resources { base: base.into() }
    }

    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        let full = self.resolve(path);
        std::fs::read(&full).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", full.display())))
    }

    pub fn read_string(&self, path: &str) -> std::io::Result<String> {
        let full = self.resolve(path);
        std::fs::read_to_string(&full).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", full.display())))
    }

    /// `path` if it is a file, else every file under the directory `path` (recursively,
    /// hidden entries skipped) whose extension is one of `extensions`; sorted.
    pub fn list_files(&self, path: &str, extensions: &[&str]) -> std::io::Result<Vec<PathBuf>> {
        let root = self.resolve(path);
        let meta =
            std::fs::metadata(&root).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        if !meta.is_dir() {
            return Ok(vec![root]);
        }
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
            for entry in entries {
                let entry = entry?;
                let p = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if entry.file_type()?.is_dir() {
                    stack.push(p);
                } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e)) {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Calls `on_change` (on a thread of its own, coalescing bursts of events) whenever a
    /// file under one of `paths` (files or directories, watched recursively) changes.
    /// Watching stops when the returned guard is dropped.
    pub fn watch(&self, paths: &[String], on_change: impl Fn() + Send + 'static) -> anyhow::Result<WatchGuard> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let _ = tx.send(());
                }
            }
        })?;
        for p in paths {
            let full = self.resolve(p);
            if full.is_dir() {
                watcher.watch(&full, RecursiveMode::Recursive)?;
            } else if let Some(parent) = full.parent() {
                // The directory, so that editors that save by renaming are seen.
                watcher.watch(parent, RecursiveMode::NonRecursive)?;
            }
        }
        let thread = std::thread::Builder::new().name("ward-watch".into()).spawn(move || {
            while rx.recv().is_ok() {
                // Let the writer finish: editors and `cp` emit several events per save.
                std::thread::sleep(Duration::from_millis(200));
                while rx.try_recv().is_ok() {}
                on_change();
            }
        })?;
        Ok(WatchGuard { _watcher: watcher, _thread: thread })
    }
}

/// Keeps a [`Resources::watch`] alive.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

type Loader<T> = dyn Fn(&Resources) -> anyhow::Result<T> + Send + Sync;

/// A value built from files that is rebuilt when one of them changes.
///
/// Readers call [`Reloadable::current`] once per batch, so a reload takes effect at a batch
/// boundary. A rebuild that fails keeps the previous value and is counted.
pub struct Reloadable<T> {
    value: ArcSwap<T>,
    loader: Box<Loader<T>>,
    resources: Resources,
    generation: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Builds the first value (an error here is a configuration error).
    pub fn new(
        resources: &Resources,
        loader: impl Fn(&Resources) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Arc<Self>> {
        let first = loader(resources)?;
        Ok(Arc::new(Reloadable {
            value: ArcSwap::from_pointee(first),
            loader: Box::new(loader),
            resources: resources.clone(),
            generation: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            watcher: Mutex::new(None),
        }))
    }

    pub fn current(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// How many successful reloads happened.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Rebuilds now. Returns whether the new value was installed.
    pub fn reload(&self) -> bool {
        match (self.loader)(&self.resources) {
            Ok(v) => {
                self.value.store(Arc::new(v));
                self.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload failed; keeping the previous version");
                self.failures.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut l) = self.last_error.lock() {
                    *l = Some(format!("{e:#}"));
                }
                false
            }
        }
    }

    /// Watches `paths` (relative to the resources' base) and reloads when any changes.
    /// Directories are watched rather than files, so editors that save by renaming work.
    pub fn watch(self: &Arc<Self>, paths: &[String]) -> anyhow::Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let targets: Vec<PathBuf> = paths
            .iter()
            .map(|p| {
                let full = self.resources.resolve(p);
                full.canonicalize().unwrap_or(full)
            })
            .collect();
        let weak = Arc::downgrade(self);
        let wanted = targets.clone();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            let hit = ev.paths.iter().any(|p| {
                let p = p.canonicalize().unwrap_or_else(|_| p.clone());
                wanted.contains(&p)
            });
            if !hit {
                return;
            }
            if let Some(this) = weak.upgrade() {
                // Let the writer finish: editors and `cp` emit several events per save.
                std::thread::sleep(Duration::from_millis(50));
                this.reload();
            }
        })?;
        let mut dirs: Vec<PathBuf> = targets.iter().filter_map(|t| t.parent().map(Path::to_path_buf)).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            watcher.watch(&d, RecursiveMode::NonRecursive)?;
        }
        *self.watcher.lock().map_err(|_| anyhow::anyhow!("watcher lock poisoned"))? = Some(watcher);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_and_keeps_old_value_on_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n.txt"), "1").unwrap();
        let res = Resources::new(dir.path());
        let r = Reloadable::new(&res, |res| {
            let s = res.read_string("n.txt")?;
            Ok(s.trim().parse::<u32>()?)
        })
        .unwrap();
        r.watch(&["n.txt".to_string()]).unwrap();
        assert_eq!(*r.current(), 1);

        std::fs::write(dir.path().join("n.txt"), "2").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while *r.current() != 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*r.current(), 2);

        let before = r.failures();
        std::fs::write(dir.path().join("n.txt"), "not a number").unwrap();
        while r.failures() == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(r.failures() > before);
        assert_eq!(*r.current(), 2, "a failed reload keeps the running value");
        assert!(r.last_error().unwrap().contains("invalid digit"));
    }
}
