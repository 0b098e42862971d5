//! A [`Store`] on a local (or shared, e.g. NFS or a ReadWriteMany volume) filesystem.
//!
//! Kept beside `object_store`'s own filesystem store because Ward's guarantees here include a
//! power loss, not only a crash: every object is written to a temporary file, fsynced, and
//! then renamed (`put`) or hard-linked (`create`, which fails when the key exists) into place,
//! and the directory is fsynced. A key written once (`put_new`: checkpoint parts) is written in
//! place and fsynced, and its directory fsynced once for all of them (`sync_dir`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Created, Entry, Store};

pub struct LocalStore {
    root: PathBuf,
    shown: String,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        let shown = root.display().to_string();
        LocalStore { root, shown }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, key: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {e}", self.path(key).display())
    }

    /// Writes `bytes` to a fresh temporary file beside `path`, fsynced.
    fn write_temp(&self, path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(tmp)
    }
}

fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

impl Store for LocalStore {
    fn location(&self) -> &str {
        &self.shown
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(key);
        let tmp = self.write_temp(&path, bytes).map_err(|e| self.err(key, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.err(key, e))?;
        sync_parent_dir(&path).map_err(|e| self.err(key, e))
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.path(key);
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // No temporary file and rename: the key is new, and a partial file is named by no
            // manifest (and removed with its checkpoint's other unnamed objects).
            let mut f = std::fs::File::create_new(&path)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        write().map_err(|e| self.err(key, e))
    }

    fn sync_dir(&self, dir: &str) -> anyhow::Result<()> {
        let path = self.path(dir.trim_end_matches('/'));
        match std::fs::File::open(&path).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(dir, e)),
        }
    }

    fn create(&self, key: &str, bytes: &[u8]) -> anyhow::Result<Created> {
        let path = self.path(key);
        let tmp = self.write_temp(&path, bytes).map_err(|e| self.err(key, e))?;
        // A hard link never replaces an existing file: only one writer can create the key.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_parent_dir(&path).map_err(|e| self.err(key, e))?;
                Ok(Created::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Exists),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn exists(&self, key: &str) -> anyhow::Result<bool> {
        match std::fs::metadata(self.path(key)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn list(&self, dir: &str) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.join(dir.trim_end_matches('/'))];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                    continue
                }
                Err(e) => anyhow::bail!("{}: {e}", dir.display()),
            };
            for entry in entries {
                let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Renamed or removed since the directory was read (a writer's temporary file).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => anyhow::bail!("{}: {e}", path.display()),
                };
                if meta.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    out.push(Entry { key: rel.to_string_lossy().replace('\\', "/"), size: meta.len() });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(self.err(key, e)),
            _ => {}
        }
        // Directories exist only for the keys under them (as in an object store): remove the
        // ones left empty, up to the root.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let to_path = self.path(to);
        if let Some(dir) = to_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(to, e))?;
        }
        match std::fs::rename(self.path(from), &to_path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err(from, e)),
        }
    }

    fn upload(&self, path: &Path, key: &str) -> anyhow::Result<()> {
        let target = self.path(key);
        if target == path {
            return Ok(());
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(key, e))?;
        }
        if std::fs::rename(path, &target).is_err() {
            // Another filesystem: copy, then drop the original.
            std::fs::copy(path, &target).map_err(|e| self.err(key, e))?;
            std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_never_replaces_and_lists_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().join("root"));
        assert_eq!(s.create("a/MANIFEST", b"one").unwrap(), Created::Created);
        assert_eq!(s.create("a/MANIFEST", b"two").unwrap(), Created::Exists);
        assert_eq!(s.get("a/MANIFEST").unwrap().as_deref(), Some(&b"one"[..]));
        s.put("a/parts/x.bin", b"xx").unwrap();
        s.put_new("a/parts/w.bin", b"ww").unwrap();
        s.sync_dir("a/parts").unwrap();
        assert!(s.put_new("a/parts/w.bin", b"again").is_err(), "a key is written once");
        assert_eq!(s.get("a/parts/w.bin").unwrap().as_deref(), Some(&b"ww"[..]));
        s.delete("a/parts/w.bin").unwrap();
        s.put("ab/y", b"y").unwrap();
        let keys = |p: &str| s.list(p).unwrap().into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys("a/"), vec!["a/MANIFEST", "a/parts/x.bin"]);
        assert_eq!(keys("a"), vec!["a/MANIFEST", "a/parts/x.bin"]);
        assert!(keys("nothing").is_empty());
        assert_eq!(keys(""), vec!["a/MANIFEST", "a/parts/x.bin", "ab/y"]);
        assert!(s.rename("a/parts/x.bin", "z/x.bin").unwrap());
        assert!(!s.rename("a/parts/x.bin", "z/x.bin").unwrap());
        s.delete("z/x.bin").unwrap();
        s.delete("z/x.bin").unwrap();
        assert!(!dir.path().join("root/z").exists(), "an emptied directory goes too");
        assert_eq!(s.get("z/x.bin").unwrap(), None);
        assert!(std::fs::read_dir(dir.path().join("root/a")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }
}
