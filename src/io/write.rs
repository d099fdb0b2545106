//! Atomic, durable Parquet output: rows go to a hidden temporary file beside the destination,
//! which is flushed to disk and renamed over it only when complete, so a reader never sees a
//! half-written file and a crash after the rename does not lose the new one.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// A file or folder being written under a temporary name beside its destination; removed on
/// drop unless committed. Committing flushes it to disk and renames it over the destination in
/// one step (a folder is exchanged with the previous one atomically), then flushes the parent
/// folder, so a reader, or a crash at any point, sees either the previous complete output or
/// the new one.
///
/// The temporary name is `.NAME.tmp-RANDOM` and this value holds an exclusive lock (`flock`)
/// on it while it lives: a later run removes such leftovers only when it can take their lock,
/// which works across processes that share a volume but not a PID namespace.
#[derive(Debug)]
pub struct AtomicPath {
    tmp: PathBuf,
    dest: PathBuf,
    is_dir: bool,
    committed: bool,
    /// The open temporary file or folder whose lock marks it as live work.
    _held: File,
}

impl AtomicPath {
    /// Reserves a locked `.NAME.tmp-RANDOM` file beside `dest`, removing the leftovers of
    /// interrupted runs.
    pub fn new(dest: &Path) -> Result<Self> {
        Self::reserve(dest, false)
    }

    /// As [`AtomicPath::new`], for a folder.
    pub fn new_dir(dest: &Path) -> Result<Self> {
        Self::reserve(dest, true)
    }

    fn reserve(dest: &Path, is_dir: bool) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Config(format!("output path {} names no file", dest.display())))?
            .to_string_lossy()
            .to_string();
        let dir = parent_of(dest);
        std::fs::create_dir_all(&dir).map_err(|e| Error::output(dest, e))?;
        remove_stale(&dir, &name);
        let (tmp, held) = claim(&dir, &name, is_dir).map_err(|e| Error::output(dest, e))?;
        Ok(AtomicPath {
            tmp,
            dest: dest.to_path_buf(),
            is_dir,
            committed: false,
            _held: held,
        })
    }

    /// The temporary path to write to.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// The output as the user named it; errors name this, not the temporary path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Writes `contents` to the temporary path.
    pub fn write(&self, contents: &[u8]) -> Result<()> {
        std::fs::write(&self.tmp, contents).map_err(|e| Error::output(&self.dest, e))
    }

    /// Flushes the temporary file or folder to disk and renames it over the destination.
    pub fn commit(mut self) -> Result<()> {
        let dest = self.dest.clone();
        let fail = |e| Error::output(&dest, e);
        sync_tree(&self.tmp).map_err(fail)?;
        if self.is_dir && dest.exists() {
            exchange(&self.tmp, &dest).map_err(fail)?;
            // The previous folder now sits at the temporary name; drop removes it.
        } else {
            std::fs::rename(&self.tmp, &dest).map_err(fail)?;
            self.committed = true;
        }
        File::open(parent_of(&dest))
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }
}

impl Drop for AtomicPath {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_path(&self.tmp);
        }
    }
}

/// The folder `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `.NAME.tmp-RANDOM` in `dir` and locks it. It is created as `...RANDOM.new`, locked,
/// then renamed (the lock stays with the open file), so [`remove_stale`] never sees it
/// unlocked.
fn claim(dir: &Path, name: &str, is_dir: bool) -> std::io::Result<(PathBuf, File)> {
    loop {
        let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
        let mut staged = tmp.clone().into_os_string();
        staged.push(".new");
        let staged = PathBuf::from(staged);
        let created = if is_dir {
            std::fs::create_dir(&staged).and_then(|()| File::open(&staged))
        } else {
            File::options().write(true).create_new(true).open(&staged)
        };
        let held = match created {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        held.lock()?;
        if tmp.exists() {
            // Another run drew the same name (2^-64): draw again.
            drop(held);
            let _ = remove_path(&staged);
            continue;
        }
        std::fs::rename(&staged, &tmp)?;
        return Ok((tmp, held));
    }
}

/// Flushes a file, or a folder's files and the folder itself, to disk.
fn sync_tree(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
    }
    File::open(path)?.sync_all()
}

/// Swaps two paths atomically (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Staged names (`.new`) older than this are a run that died between creating and locking.
const STAGED_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the `.NAME.tmp-*` entries in `dir` that no process holds (runs killed mid-write);
/// those whose lock is held are another run's work in progress.
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().to_string();
        if !file_name.starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let stale = if file_name.ends_with(".new") {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STAGED_STALE_AFTER)
        } else {
            // The lock taken here is released when `probe` drops, after the removal.
            File::open(&path).is_ok_and(|probe| probe.try_lock().is_ok())
        };
        if stale {
            tracing::info!(path = %path.display(), "removing a leftover of an interrupted run");
            let _ = remove_path(&path);
        }
    }
}

/// Writes `contents` to `dest` atomically.
pub fn write_atomic(dest: &Path, contents: &[u8]) -> Result<()> {
    let target = AtomicPath::new(dest)?;
    target.write(contents)?;
    target.commit()
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        // Row groups of 262,144 rows: the writer holds one encoded group in memory.
        .set_max_row_group_row_count(Some(1 << 18))
        .build()
}

/// A Parquet writer on `path`, a file written for the output `dest` (which errors name).
fn open_writer(path: &Path, dest: &Path, schema: SchemaRef) -> Result<ArrowWriter<File>> {
    let file = File::create(path).map_err(|e| Error::output(dest, e))?;
    ArrowWriter::try_new(file, schema, Some(writer_properties()))
        .map_err(|e| Error::output(dest, e))
}

/// A zstd-compressed Parquet file written batch by batch.
pub struct ParquetSink {
    writer: ArrowWriter<File>,
    target: AtomicPath,
}

impl ParquetSink {
    /// Opens the temporary file for `dest`.
    pub fn create(dest: &Path, schema: SchemaRef) -> Result<Self> {
        let target = AtomicPath::new(dest)?;
        let writer = open_writer(target.tmp(), dest, schema)?;
        Ok(ParquetSink { writer, target })
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| Error::output(self.target.dest(), e))
    }

    /// Closes the file and renames it into place.
    pub fn finish(self) -> Result<()> {
        self.close()?.commit()
    }

    /// Closes the file but leaves it under its temporary name, so several outputs can be
    /// renamed into place together once all are complete.
    pub fn close(mut self) -> Result<AtomicPath> {
        self.writer
            .finish()
            .map_err(|e| Error::output(self.target.dest(), e))?;
        Ok(self.target)
    }
}

/// Name of the marker written last into a complete output folder (Spark's convention).
pub const SUCCESS_MARKER: &str = "_SUCCESS";

/// A folder of Parquet part files of at most `max_rows` rows each, `_SUCCESS` written last.
pub struct PartitionedSink {
    target: AtomicPath,
    schema: SchemaRef,
    max_rows: usize,
    current: Option<(ArrowWriter<File>, usize)>,
    parts: usize,
}

impl PartitionedSink {
    /// Opens the temporary folder for `dest`.
    pub fn create(dest: &Path, schema: SchemaRef, max_rows: usize) -> Result<Self> {
        Ok(PartitionedSink {
            target: AtomicPath::new_dir(dest)?,
            schema,
            max_rows: max_rows.max(1),
            current: None,
            parts: 0,
        })
    }

    /// Appends rows, starting a new part whenever the current one is full.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self
                .current
                .as_ref()
                .is_none_or(|(_, rows)| *rows >= self.max_rows)
            {
                self.finish_part()?;
                let path = self
                    .target
                    .tmp()
                    .join(format!("part-{:05}.parquet", self.parts));
                let writer = open_writer(&path, self.target.dest(), self.schema.clone())?;
                self.current = Some((writer, 0));
                self.parts += 1;
            }
            let (writer, rows) = self.current.as_mut().expect("opened above");
            let take = (self.max_rows - *rows).min(batch.num_rows() - offset);
            writer
                .write(&batch.slice(offset, take))
                .map_err(|e| Error::output(self.target.dest(), e))?;
            *rows += take;
            offset += take;
        }
        Ok(())
    }

    fn finish_part(&mut self) -> Result<()> {
        if let Some((writer, _)) = self.current.take() {
            writer
                .close()
                .map_err(|e| Error::output(self.target.dest(), e))?;
        }
        Ok(())
    }

    /// Closes the last part and writes the marker; the folder stays under its temporary name.
    pub fn close(mut self) -> Result<AtomicPath> {
        if self.parts == 0 {
            // An empty result is still a readable data set: one part with the schema.
            let path = self
                .target
                .tmp()
                .join(format!("part-{:05}.parquet", self.parts));
            let writer = open_writer(&path, self.target.dest(), self.schema.clone())?;
            self.current = Some((writer, 0));
            self.parts += 1;
        }
        self.finish_part()?;
        let marker = self.target.tmp().join(SUCCESS_MARKER);
        std::fs::write(&marker, b"").map_err(|e| Error::output(self.target.dest(), e))?;
        Ok(self.target)
    }
}

/// The triplet output: one Parquet file, or a folder of parts.
pub enum TripletSink {
    File(ParquetSink),
    Folder(PartitionedSink),
}

impl TripletSink {
    /// A folder when `dest` ends with `/` or names an existing folder, else a file.
    pub fn create(dest: &Path, schema: SchemaRef, max_rows_per_file: usize) -> Result<Self> {
        if is_folder_output(dest) {
            Ok(TripletSink::Folder(PartitionedSink::create(
                dest,
                schema,
                max_rows_per_file,
            )?))
        } else {
            Ok(TripletSink::File(ParquetSink::create(dest, schema)?))
        }
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            TripletSink::File(s) => s.write(batch),
            TripletSink::Folder(s) => s.write(batch),
        }
    }

    /// Completes the output under its temporary name.
    pub fn close(self) -> Result<AtomicPath> {
        match self {
            TripletSink::File(s) => s.close(),
            TripletSink::Folder(s) => s.close(),
        }
    }
}

pub use crate::config::is_folder_output;

/// Writes one batch to the temporary path of `target`, to be committed with other outputs;
/// errors name the destination.
pub fn write_parquet_into(target: &AtomicPath, batch: &RecordBatch) -> Result<()> {
    let mut writer = open_writer(target.tmp(), target.dest(), batch.schema())?;
    writer
        .write(batch)
        .map_err(|e| Error::output(target.dest(), e))?;
    writer
        .close()
        .map_err(|e| Error::output(target.dest(), e))?;
    Ok(())
}

/// Writes one batch to `dest` atomically.
pub fn write_parquet(dest: &Path, batch: &RecordBatch) -> Result<()> {
    let mut sink = ParquetSink::create(dest, batch.schema())?;
    sink.write(batch)?;
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_file_is_removed_and_the_previous_output_kept() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("out.parquet");
        std::fs::write(&dest, b"previous").unwrap();
        {
            let target = AtomicPath::new(&dest).unwrap();
            std::fs::write(target.tmp(), b"partial").unwrap();
            assert!(target.tmp().exists());
        }
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file removed"
        );
    }

    #[test]
    fn a_committed_file_replaces_the_destination() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("out.json");
        std::fs::write(&dest, b"previous").unwrap();
        write_atomic(&dest, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_output_folder_is_created() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("new/deeper/out.json");
        write_atomic(&dest, b"x").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"x");
    }

    #[test]
    fn an_output_folder_that_cannot_be_made_is_an_error_naming_it() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = AtomicPath::new(&dir.path().join("file/out.parquet")).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn a_committed_folder_replaces_the_previous_one_whole() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("parts");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("old-part"), b"old").unwrap();
        let target = AtomicPath::new_dir(&dest).unwrap();
        std::fs::write(target.tmp().join("new-part"), b"new").unwrap();
        target.commit().unwrap();
        let names: Vec<String> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["new-part"]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "old folder removed"
        );
    }

    #[test]
    fn leftovers_no_run_holds_are_removed() {
        let dir = tempfile::TempDir::new().unwrap();
        let stale = dir.path().join(".out.parquet.tmp-00000000deadbeef");
        std::fs::write(&stale, b"partial").unwrap();
        let stale_dir = dir.path().join(".out.parquet.tmp-00000000feedf00d");
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("part"), b"partial").unwrap();
        let _target = AtomicPath::new(&dir.path().join("out.parquet")).unwrap();
        assert!(!stale.exists());
        assert!(!stale_dir.exists());
    }

    #[test]
    fn a_temporary_output_a_live_run_holds_is_kept() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("out.parquet");
        let first = AtomicPath::new(&dest).unwrap();
        first.write(b"in progress").unwrap();
        let second = AtomicPath::new(&dest).unwrap();
        assert!(first.tmp().exists(), "the live run's file was removed");
        assert_ne!(first.tmp(), second.tmp());
        let folder = AtomicPath::new_dir(&dir.path().join("parts")).unwrap();
        let _again = AtomicPath::new_dir(&dir.path().join("parts")).unwrap();
        assert!(folder.tmp().is_dir(), "the live run's folder was removed");
    }

    #[test]
    fn temporary_names_are_unpredictable() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("out.parquet");
        let names: std::collections::HashSet<PathBuf> = (0..16)
            .map(|_| AtomicPath::new(&dest).unwrap().tmp().to_path_buf())
            .collect();
        assert_eq!(names.len(), 16);
        assert!(names.iter().all(|n| {
            !n.to_string_lossy()
                .contains(&std::process::id().to_string())
        }));
    }

    #[test]
    fn a_committed_file_replaces_the_destination_and_leaves_nothing_else() {
        let dir = tempfile::TempDir::new().unwrap();
        let dest = dir.path().join("out.json");
        std::fs::write(&dest, b"old").unwrap();
        write_atomic(&dest, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
