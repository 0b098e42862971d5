//! Files a pipeline depends on (packs, threat-intel lists, GeoIP databases, asset inventories):
//! resolved relative to the spec, read for the components (operators do no I/O themselves),
//! and watched so that a changed file is reloaded without a restart.
//!
//! A load can be recorded (every file read and directory listed, with what was found) and
//! played back later from that record instead of the disk: checkpoints keep the files a rule
//! set or enrichment data was built from, so a resumed run rebuilds exactly those versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct Resources {
    base: PathBuf,
    log: Option<Arc<FileLog>>,
}

#[derive(Debug)]
enum FileLog {
    Recording(Mutex<FileSet>),
    Replaying(FileSet),
}

/// What one load read: each file's bytes and each directory listing, by resolved path.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSet {
    files: BTreeMap<String, Vec<u8>>,
    /// `<dir>\0<extensions>` → the files listed.
    listings: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSet({} files, {} bytes, {} listings)", self.files.len(), self.bytes(), self.listings.len())
    }
}

impl FileSet {
    /// Bytes of file content held.
    pub fn bytes(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    fn listing_key(dir: &Path, extensions: &[&str]) -> String {
        format!("{}\0{}", dir.display(), extensions.join(","))
    }
}

fn not_kept(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{}: not among the files kept with the checkpoint", path.display()),
    )
}

impl Resources {
    /// Resources resolved relative to `base` (the directory holding the spec).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Resources { base: base.into(), log: None }
    }

    /// The same resources, recording what is read through them ([`Resources::recorded`]).
    pub fn recording(&self) -> Resources {
        Resources { base: self.base.clone(), log: Some(Arc::new(FileLog::Recording(Mutex::default()))) }
    }

    /// The same resources, reading `files` instead of the disk.
    pub fn replaying(&self, files: FileSet) -> Resources {
        Resources { base: self.base.clone(), log: Some(Arc::new(FileLog::Replaying(files))) }
    }

    /// What was read through these resources since [`Resources::recording`] made them.
    pub fn recorded(&self) -> FileSet {
        match self.log.as_deref() {
            Some(FileLog::Recording(m)) => std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner())),
            Some(FileLog::Replaying(f)) => f.clone(),
            None => FileSet::default(),
        }
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
        self.read_file(&self.resolve(path), u64::MAX)
    }

    pub fn read_string(&self, path: &str) -> std::io::Result<String> {
        let full = self.resolve(path);
        String::from_utf8(self.read_file(&full, u64::MAX)?).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not UTF-8 text (invalid byte at offset {})", full.display(), e.utf8_error().valid_up_to()),
            )
        })
    }

    /// The first `limit` bytes of the file at `full` (a path [`Resources::list_files`] gave,
    /// or resolved): the caller refuses a file longer than it wants from `limit + 1` bytes.
    pub fn read_file(&self, full: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let key = full.display().to_string();
        if let Some(FileLog::Replaying(f)) = self.log.as_deref() {
            return f.files.get(&key).cloned().ok_or_else(|| not_kept(full));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(full)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", full.display())))?;
        if let Some(FileLog::Recording(m)) = self.log.as_deref() {
            m.lock().unwrap_or_else(|e| e.into_inner()).files.entry(key).or_insert_with(|| bytes.clone());
        }
        Ok(bytes)
    }

    /// `path` if it is a file, else every file under the directory `path` (recursively,
    /// hidden entries skipped) whose extension is one of `extensions`; sorted.
    pub fn list_files(&self, path: &str, extensions: &[&str]) -> std::io::Result<Vec<PathBuf>> {
        let root = self.resolve(path);
        let key = FileSet::listing_key(&root, extensions);
        match self.log.as_deref() {
            Some(FileLog::Replaying(f)) => {
                let listed = f.listings.get(&key).ok_or_else(|| not_kept(&root))?;
                Ok(listed.iter().map(PathBuf::from).collect())
            }
            Some(FileLog::Recording(m)) => {
                let listed = Self::list_on_disk(root, extensions)?;
                let names = listed.iter().map(|p| p.display().to_string()).collect();
                m.lock().unwrap_or_else(|e| e.into_inner()).listings.entry(key).or_insert(names);
                Ok(listed)
            }
            None => Self::list_on_disk(root, extensions),
        }
    }

    fn list_on_disk(root: PathBuf, extensions: &[&str]) -> std::io::Result<Vec<PathBuf>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_load_plays_back_without_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules/sub")).unwrap();
        std::fs::write(dir.path().join("rules/a.yml"), "a").unwrap();
        std::fs::write(dir.path().join("rules/sub/b.yml"), "b").unwrap();
        std::fs::write(dir.path().join("intel.txt"), "1.2.3.4").unwrap();
        let load = |r: &Resources| -> std::io::Result<Vec<String>> {
            let mut out = Vec::new();
            for f in r.list_files("rules", &["yml"])? {
                out.push(String::from_utf8(r.read_file(&f, 10)?).unwrap());
            }
            out.push(r.read_string("intel.txt")?);
            Ok(out)
        };
        let recording = Resources::new(dir.path()).recording();
        let first = load(&recording).unwrap();
        assert_eq!(first, ["a", "b", "1.2.3.4"]);
        let files = recording.recorded();
        assert_eq!((files.files().count(), files.bytes()), (3, 9));

        std::fs::remove_dir_all(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("intel.txt"), "changed").unwrap();
        let replay = Resources::new(dir.path()).replaying(files);
        assert_eq!(load(&replay).unwrap(), first);
        let missing = replay.read("other.txt").unwrap_err();
        assert!(missing.to_string().contains("not among the files kept with the checkpoint"), "{missing}");
    }
}
