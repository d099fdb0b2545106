//! Atomic Parquet output: rows go to a hidden temporary file beside the destination, which is
//! renamed over it only when complete, so a reader never sees a half-written file.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// A file being written under a temporary name; removed on drop unless committed.
#[derive(Debug)]
pub struct AtomicPath {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl AtomicPath {
    /// Reserves `.NAME.tmp-PID` beside `dest`.
    pub fn new(dest: &Path) -> Result<Self> {
        let name = dest.file_name().ok_or_else(|| {
            Error::Config(format!("output path {} names no file", dest.display()))
        })?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::io(
                &dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "output folder does not exist"),
            ));
        }
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        Ok(AtomicPath {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    /// The temporary path to write to.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary file over the destination.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicPath {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `contents` to `dest` atomically.
pub fn write_atomic(dest: &Path, contents: &[u8]) -> Result<()> {
    let target = AtomicPath::new(dest)?;
    std::fs::write(target.tmp(), contents).map_err(|e| Error::io(target.tmp(), e))?;
    target.commit()
}

/// A zstd-compressed Parquet file written batch by batch (one row group per call at most).
pub struct ParquetSink {
    writer: ArrowWriter<File>,
    target: AtomicPath,
}

impl ParquetSink {
    /// Opens the temporary file for `dest`.
    pub fn create(dest: &Path, schema: SchemaRef) -> Result<Self> {
        let target = AtomicPath::new(dest)?;
        let file = File::create(target.tmp()).map_err(|e| Error::io(target.tmp(), e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .set_max_row_group_row_count(Some(1 << 20))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| Error::parquet(dest, e))?;
        Ok(ParquetSink { writer, target })
    }

    /// Appends rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| Error::parquet(self.target.tmp(), e))
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
            .map_err(|e| Error::parquet(self.target.tmp(), e))?;
        Ok(self.target)
    }
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
    fn a_missing_output_folder_is_an_error_naming_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let err = AtomicPath::new(&dir.path().join("nope/out.parquet")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
