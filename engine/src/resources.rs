//! Files a pipeline depends on (packs, threat-intel lists, GeoIP databases, asset inventories):
//! resolved relative to the spec, read for the components (operators do no I/O themselves),
//! and watched so that a changed file is reloaded without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

    /// The directory relative paths are resolved against.
    pub fn base(&self) -> &Path {
        &self.base
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
