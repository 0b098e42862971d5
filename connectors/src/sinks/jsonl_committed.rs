//! The `jsonl` sink under checkpoints: exactly once.
//!
//! Each worker keeps what it writes in memory until a checkpoint is prepared; the lines then go
//! into the checkpoint (so they survive a crash) and are appended to the file only when the
//! checkpoint is durable. Every append is recorded in a commit log beside the file
//! (`<file>.ward-commits`: `<checkpoint|end-RUN> <worker> <offset> <length>` per line, after a
//! first `base <offset>` line saying where Ward's commits begin), written after the appended
//! bytes are synced. Before a run resumes, the file is cut back to what the
//! log says was committed by checkpoints up to the one resumed from (dropping partial appends
//! and what a run's end wrote if its closing checkpoint never completed), and the lines of any
//! retained checkpoint the log does not show are appended.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ward_engine::checkpoint::SinkCheckpoint;

/// What a commit log line records.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    tag: Tag,
    worker: usize,
    start: u64,
    len: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Tag {
    Checkpoint(u64),
    /// Written when a run ended, before its closing checkpoint.
    End(u64),
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let mut f = line.split_whitespace();
        let tag = f.next()?;
        let tag = match tag.strip_prefix("end-") {
            Some(run) => Tag::End(run.parse().ok()?),
            None => Tag::Checkpoint(tag.parse().ok()?),
        };
        Some(Entry {
            tag,
            worker: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
            len: f.next()?.parse().ok()?,
        })
    }

    fn render(&self) -> String {
        let tag = match self.tag {
            Tag::Checkpoint(c) => c.to_string(),
            Tag::End(run) => format!("end-{run}"),
        };
        format!("{tag} {} {} {}\n", self.worker, self.start, self.len)
    }
}

fn log_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".ward-commits");
    path.with_file_name(name)
}

/// The file and its commit log, shared by a sink's workers.
pub struct CommittedFile {
    file: File,
    log: File,
}

impl CommittedFile {
    /// Opens for appending; a run that resumes from no checkpoint starts the file over.
    pub fn open(path: &Path, fresh: bool) -> std::io::Result<CommittedFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if fresh {
            File::create(path)?.sync_all()?;
            // Where Ward's commits begin: without it, a crash between the first append and its
            // log line would leave bytes a resume takes for the file's own earlier content.
            let mut log = File::create(log_path(path))?;
            log.write_all(b"base 0\n")?;
            log.sync_all()?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let log = OpenOptions::new().create(true).append(true).open(log_path(path))?;
        Ok(CommittedFile { file, log })
    }

    fn append(&mut self, tag: Tag, worker: usize, data: &[u8]) -> anyhow::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let start = self.file.metadata()?.len();
        self.file.write_all(data)?;
        self.file.sync_data()?;
        let entry = Entry { tag, worker, start, len: data.len() as u64 };
        self.log.write_all(entry.render().as_bytes())?;
        self.log.sync_data()?;
        Ok(())
    }

    /// Appends what checkpoint `epoch` holds of `worker`.
    pub fn commit(&mut self, epoch: u64, worker: usize, data: &[u8]) -> anyhow::Result<()> {
        self.append(Tag::Checkpoint(epoch), worker, data)
    }

    /// Appends what a worker wrote after its last checkpoint, at the end of run `run`.
    pub fn commit_end(&mut self, run: u64, worker: usize, data: &[u8]) -> anyhow::Result<()> {
        self.append(Tag::End(run), worker, data)
    }
}

/// A worker's checkpoint part: every segment (the lines one checkpoint prepared) it has not
/// appended yet, oldest first. A checkpoint that never completes leaves its segment to the
/// next one, so nothing prepared is lost when a crash follows a later checkpoint.
pub fn encode_segments(segments: &[(u64, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    ward_engine::keyed::encode(&segments)
}

fn decode_segments(part: &[u8]) -> anyhow::Result<Vec<(u64, &[u8])>> {
    if part.is_empty() {
        return Ok(Vec::new());
    }
    let segments: Vec<(u64, &[u8])> = ward_engine::keyed::decode(part)?;
    Ok(segments)
}

/// Settles the file before a run resumes from the last of `retained` (see the module docs).
pub fn restore(path: &Path, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
    let Some(resumed) = retained.last().map(|c| c.manifest) else { return Ok(()) };
    let log = log_path(path);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
    let marked = text.lines().find_map(|l| l.strip_prefix("base ")?.trim().parse::<u64>().ok());
    let keep = |e: &Entry| match e.tag {
        Tag::Checkpoint(c) => c <= resumed.epoch,
        // Ends of earlier runs were settled when the run that wrote `resumed` started.
        Tag::End(run) => run < resumed.run || (resumed.closing && resumed.run == run),
    };
    let mut data = Vec::new();
    if path.exists() {
        File::open(path)?.read_to_end(&mut data)?;
    }
    // What stays: the bytes before Ward's first commit, then every kept commit in log order.
    let base = marked.or(entries.first().map(|e| e.start)).unwrap_or(data.len() as u64).min(data.len() as u64) as usize;
    let mut content = data[..base].to_vec();
    let mut kept = Vec::new();
    for e in entries.iter().filter(|e| keep(e)) {
        let (s, l) = (e.start as usize, e.len as usize);
        let Some(segment) = data.get(s..s + l) else {
            anyhow::bail!("{}: commit log names bytes {s}..{} the file does not have", path.display(), s + l);
        };
        kept.push(Entry { start: content.len() as u64, ..e.clone() });
        content.extend_from_slice(segment);
    }
    // Retained checkpoints' lines the log does not show (a crash before the append). A part
    // holds every segment its worker had not yet appended, so a segment can appear in several
    // parts: each is appended once, under the checkpoint that prepared it.
    for c in retained {
        for (worker, part) in &c.parts {
            for (epoch, data) in decode_segments(part)? {
                let tag = Tag::Checkpoint(epoch);
                if data.is_empty() || kept.iter().any(|e| e.tag == tag && e.worker == *worker) {
                    continue;
                }
                kept.push(Entry { tag, worker: *worker, start: content.len() as u64, len: data.len() as u64 });
                content.extend_from_slice(data);
            }
        }
    }
    if content != data {
        let tmp = path.with_extension("ward-tmp");
        std::fs::write(&tmp, &content)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
    }
    let rendered: String = std::iter::once(format!("base {base}\n")).chain(kept.iter().map(Entry::render)).collect();
    if rendered != text {
        let tmp = log.with_extension("ward-tmp");
        std::fs::write(&tmp, rendered)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &log)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_engine::checkpoint::{Manifest, Ownership};

    fn manifest(epoch: u64, closing: bool, run: u64) -> Manifest {
        Manifest {
            layout_version: 1,
            pipeline: "p".into(),
            epoch,
            workers: 2,
            processes: 1,
            created_ms: 0,
            final_checkpoint: false,
            closing,
            run,
            rulesets: Default::default(),
            contexts: Default::default(),
            writer: String::new(),
            parts: vec![],
        }
    }

    #[test]
    fn resume_cuts_back_uncommitted_appends_and_adds_missing_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut f = CommittedFile::open(&path, true).unwrap();
        f.commit(3, 0, b"a3\n").unwrap();
        f.commit(3, 1, b"b3\n").unwrap();
        f.commit(6, 0, b"a6\n").unwrap();
        // Worker 1 never appended its part of 6; the run ended without its closing checkpoint
        // (its end append must go); a partial append without a log line.
        f.commit_end(0, 0, b"a-end\n").unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"torn").unwrap();
        let (m3, m6) = (manifest(3, false, 0), manifest(6, false, 0));
        let seg = |e: u64, d: &[u8]| encode_segments(&[(e, d.to_vec())]).unwrap();
        let (a3, b3, a6) = (seg(3, b"a3\n"), seg(3, b"b3\n"), seg(6, b"a6\n"));
        // Worker 1's part of 6 still holds its segment of checkpoint 5, which never completed.
        let b6 = encode_segments(&[(5, b"b5\n".to_vec()), (6, b"b6\n".to_vec())]).unwrap();
        let retained = [
            SinkCheckpoint {
                manifest: &m3,
                parts: vec![(0, a3.as_slice()), (1, b3.as_slice())],
                owner: Ownership::SINGLE,
            },
            SinkCheckpoint {
                manifest: &m6,
                parts: vec![(0, a6.as_slice()), (1, b6.as_slice())],
                owner: Ownership::SINGLE,
            },
        ];
        restore(&path, &retained).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a3\nb3\na6\nb5\nb6\n");
        // Idempotent, and appends continue after it.
        restore(&path, &retained).unwrap();
        let mut f = CommittedFile::open(&path, false).unwrap();
        f.commit(9, 1, b"b9\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a3\nb3\na6\nb5\nb6\nb9\n");
        // A closing checkpoint of run 7 keeps that run's end appends.
        f.commit_end(7, 0, b"a-end\n").unwrap();
        let closing = manifest(10, true, 7);
        restore(&path, &[SinkCheckpoint { manifest: &closing, parts: vec![], owner: Ownership::SINGLE }]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a3\nb3\na6\nb5\nb6\nb9\na-end\n");
        // A later run's checkpoint keeps that end too (it was settled when run 11 started).
        let later = manifest(14, false, 11);
        restore(&path, &[SinkCheckpoint { manifest: &later, parts: vec![], owner: Ownership::SINGLE }]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a3\nb3\na6\nb5\nb6\nb9\na-end\n");
    }

    #[test]
    fn a_crash_between_the_first_append_and_its_log_line_adds_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        CommittedFile::open(&path, true).unwrap();
        // The first append's bytes are synced; the process dies before the log line.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"a3\n").unwrap();
        let m3 = manifest(3, false, 0);
        let part = encode_segments(&[(3, b"a3\n".to_vec())]).unwrap();
        restore(
            &path,
            &[SinkCheckpoint { manifest: &m3, parts: vec![(0, part.as_slice())], owner: Ownership::SINGLE }],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a3\n", "once, from the checkpoint");
        // And again (a second resume from the same checkpoint changes nothing).
        restore(
            &path,
            &[SinkCheckpoint { manifest: &m3, parts: vec![(0, part.as_slice())], owner: Ownership::SINGLE }],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a3\n");
    }
}
