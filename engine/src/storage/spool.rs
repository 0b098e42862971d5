//! The local spool: files on their way to an object store are written under the temporary
//! directory first (`$TMPDIR/ward-spool-<process token>/`). A process removes its spool when it
//! exits; one that was killed cannot, so every process that opens a spool first removes the
//! spools of processes that are gone. Without that, a pod whose container is OOM-killed in a loop
//! fills its `/tmp` (an `emptyDir` that outlives container restarts) with half-written files.
//!
//! Whether a spool's process is alive is told by a lock, not a process id (process ids are reused
//! and differ between the containers of a pod): the owner holds an exclusive `flock` on the
//! spool's `.lock` file as long as it runs, and the kernel releases it however the process ends.
//! The lock file is locked before it is renamed into place, so a visible `.lock` that can be
//! locked belongs to a process that is gone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

const PREFIX: &str = "ward-spool-";
const LOCK: &str = ".lock";
/// A spool without a lock file is only being created (or was left by a Ward before spools were
/// locked); it is removed once it is this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

struct Spool {
    dir: PathBuf,
    _lock: File,
}

static SPOOL: OnceLock<Result<Spool, String>> = OnceLock::new();

/// This process's spool directory, created (and the spools of processes that are gone removed)
/// on first use.
pub fn dir() -> anyhow::Result<&'static Path> {
    match SPOOL.get_or_init(|| open(&std::env::temp_dir(), super::process_token())) {
        Ok(s) => Ok(&s.dir),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Removes this process's spool, if it opened one (at exit: whatever is left in it would never
/// be uploaded; a restart recovers from the last checkpoint).
pub fn remove() {
    if let Some(Ok(s)) = SPOOL.get() {
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

fn open(parent: &Path, token: &str) -> Result<Spool, String> {
    let removed = remove_stale(parent);
    if removed > 0 {
        tracing::info!("removed {removed} spool(s) of Ward processes that are gone from {}", parent.display());
    }
    let dir = parent.join(format!("{PREFIX}{token}"));
    let fail = |what: &Path, e: std::io::Error| format!("spool {}: {e}", what.display());
    std::fs::create_dir_all(&dir).map_err(|e| fail(&dir, e))?;
    let pending = dir.join(format!("{LOCK}.new"));
    let lock = File::create(&pending).map_err(|e| fail(&pending, e))?;
    lock.try_lock().map_err(|e| fail(&pending, e.into()))?;
    std::fs::rename(&pending, dir.join(LOCK)).map_err(|e| fail(&pending, e))?;
    Ok(Spool { dir, _lock: lock })
}

/// Removes the spools under `parent` whose process is gone; returns how many.
fn remove_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        // `file_type` does not follow symbolic links: only real directories are candidates.
        let is_spool = entry.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX))
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_spool && is_stale(&entry.path()) && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn is_stale(dir: &Path) -> bool {
    match File::open(dir.join(LOCK)) {
        // Dropping `lock` releases the lock taken here.
        Ok(lock) => lock.try_lock().is_ok(),
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > UNLOCKED_GRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        File::open(path).unwrap().set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn a_spool_is_removed_only_once_its_process_is_gone() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let live = open(p, "live").unwrap();
        std::fs::write(live.dir.join("part.inprogress"), b"rows").unwrap();
        // A killed process: its lock file is there, nobody holds the lock.
        let dead = open(p, "dead").unwrap();
        std::fs::write(dead.dir.join("part.inprogress"), b"rows").unwrap();
        drop(dead);
        // Without a lock file: one being created, and one left long ago.
        std::fs::create_dir(p.join("ward-spool-new")).unwrap();
        std::fs::create_dir(p.join("ward-spool-old")).unwrap();
        age(&p.join("ward-spool-old"), Duration::from_secs(3600));
        // Not spools: other names, and a link to a directory that must survive.
        std::fs::create_dir(p.join("other")).unwrap();
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("keep"), b"").unwrap();
        std::os::unix::fs::symlink(target.path(), p.join("ward-spool-link")).unwrap();

        let me = open(p, "me").unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["other", "ward-spool-link", "ward-spool-live", "ward-spool-me", "ward-spool-new"]);
        assert!(live.dir.join("part.inprogress").exists());
        assert!(target.path().join("keep").exists());
        assert!(me.dir.join(LOCK).exists(), "the lock file is in place");
        assert!(!is_stale(&me.dir), "a live process's spool is not stale");
        drop(live);
        assert_eq!(remove_stale(p), 1, "once its process is gone, the live one goes too");
    }
}
