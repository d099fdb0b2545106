//! Where the vectors live: on the heap, or spilled once to a memory-mapped scratch file when a
//! memory limit says they do not fit.
//!
//! In: rows of `f32` as they stream from the reader. Out: [`Vectors`], one contiguous `&[f32]`
//! either way, so every kernel reads slices. A spilled store is an unnamed file (removed by the
//! system when the run ends, also on error or kill) mapped read-only; its resident pages count
//! towards the process's RSS, so they are dropped (they stay in the page cache, which a
//! container's limit reclaims rather than kills for) once they exceed the store's page budget:
//! by stages that sweep it, between chunks ([`Vectors::drop_pages_over_budget`]), and on every other path by
//! a watch thread that looks every [`WATCH_INTERVAL`] while the store lives.
//! Random access (the rows a block of anchors scores) does not go through the mapping:
//! [`Vectors::gather_rows`] reads them with `pread` into a buffer, because faulting scattered
//! rows in maps whole folios around each one and the page budget then thrashes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Vectors, row-major, on the heap or in a mapped scratch file.
#[derive(Debug)]
pub struct Vectors(Inner);

#[derive(Debug)]
enum Inner {
    Heap(Vec<f32>),
    Mapped(Spill),
}

#[derive(Debug)]
struct Spill {
    pages: Arc<MappedPages>,
    /// The mapped file, for `pread`.
    file: File,
    /// Stops the watch thread (dropping the sender wakes it) and waits for it.
    watch: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// The mapping and what bounds its resident pages (shared with the watch thread).
#[derive(Debug)]
struct MappedPages {
    map: memmap2::Mmap,
    /// Resident pages of the mapping allowed before they are dropped, in bytes.
    budget: std::sync::atomic::AtomicUsize,
    /// File-backed resident bytes of the process when the store was mapped.
    baseline: usize,
}

/// How often the watch thread of a spilled store looks at the process's mapped pages. Faults
/// from the page cache come in at most a few GB/s, so a few milliseconds bound the overshoot
/// to a few MB; a look costs microseconds (one read of `/proc/self/statm`).
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

impl MappedPages {
    /// Drops the mapping's resident pages if the process's file-backed pages grew past the
    /// budget since the store was mapped.
    fn drop_over_budget(&self) {
        let resident = file_backed_resident_bytes().saturating_sub(self.baseline);
        if resident > self.budget.load(std::sync::atomic::Ordering::Relaxed) {
            self.drop_all();
        }
    }

    /// Drops every resident page of the mapping.
    fn drop_all(&self) {
        // SAFETY: a read-only shared file mapping; dropping its pages loses nothing, they are
        // read back from the file (or the page cache) on the next access, also by a thread
        // reading the mapping while they are dropped.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.watch.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Vectors {
    /// Whether the vectors are in a scratch file.
    pub fn is_spilled(&self) -> bool {
        matches!(self.0, Inner::Mapped(_))
    }

    /// Drops the store's resident pages if they exceed its budget (a spilled store only;
    /// cheap otherwise). Call between chunks of work that touch many rows.
    pub fn drop_pages_over_budget(&self) {
        if let Inner::Mapped(spill) = &self.0 {
            spill.pages.drop_over_budget();
        }
    }

    /// Drops all of the store's resident pages (a spilled store only), before memory is
    /// measured.
    pub fn drop_all_pages(&self) {
        if let Inner::Mapped(spill) = &self.0 {
            spill.pages.drop_all();
        }
    }

    /// Sets how many bytes of a spilled store's pages may stay resident (once a memory
    /// limit's share for them is known).
    pub fn set_page_budget(&self, bytes: usize) {
        if let Inner::Mapped(spill) = &self.0 {
            spill
                .pages
                .budget
                .store(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Rows `rows` (ascending) of width `dim`, copied into one buffer. A spilled store reads
    /// them from its file (rows close together in one read, in parallel), not through the
    /// mapping, so nothing is mapped in.
    pub fn gather_rows(&self, rows: &[u32], dim: usize) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        let mut out = vec![0f32; rows.len() * dim];
        let spill = match &self.0 {
            Inner::Heap(v) => {
                for (dst, &r) in out.chunks_exact_mut(dim).zip(rows) {
                    dst.copy_from_slice(&v[r as usize * dim..(r as usize + 1) * dim]);
                }
                return Ok(out);
            }
            Inner::Mapped(spill) => spill,
        };
        const ROWS_PER_TASK: usize = 1024;
        // A system call costs about what copying a few KiB does: rows this close are read
        // in one call with the rows between them, up to a span of `MAX_SPAN` bytes (on E3,
        // 5,000,000 rows of 256 bytes, this made mining 8% faster than one call per run of
        // consecutive rows).
        const GAP_BYTES: usize = 4096;
        const MAX_SPAN: usize = 1 << 20;
        let row_bytes = dim * 4;
        let gap = (GAP_BYTES / row_bytes) as u32 + 1;
        let max_span = (MAX_SPAN / row_bytes).max(1) as u32;
        out.par_chunks_mut(ROWS_PER_TASK * dim)
            .zip(rows.par_chunks(ROWS_PER_TASK))
            .try_for_each(|(dst, rows)| {
                let dst: &mut [u8] = bytemuck::cast_slice_mut(dst);
                let mut span_buf: Vec<u8> = Vec::new();
                let mut i = 0;
                while i < rows.len() {
                    let first = rows[i];
                    let mut end = i + 1;
                    while end < rows.len()
                        && rows[end] - rows[end - 1] <= gap
                        && rows[end] - first < max_span
                    {
                        end += 1;
                    }
                    let span = (rows[end - 1] - first + 1) as usize;
                    let at = first as u64 * row_bytes as u64;
                    let read = |buf: &mut [u8]| {
                        spill
                            .file
                            .read_exact_at(buf, at)
                            .map_err(|e| Error::io(Path::new("<scratch>"), e))
                    };
                    if span == end - i {
                        read(&mut dst[i * row_bytes..end * row_bytes])?;
                    } else {
                        span_buf.resize(span * row_bytes, 0);
                        read(&mut span_buf)?;
                        for (t, &r) in rows[i..end].iter().enumerate() {
                            let from = (r - first) as usize * row_bytes;
                            dst[(i + t) * row_bytes..(i + t + 1) * row_bytes]
                                .copy_from_slice(&span_buf[from..from + row_bytes]);
                        }
                    }
                    i = end;
                }
                Ok::<_, Error>(())
            })?;
        Ok(out)
    }

    /// A copy on the heap.
    pub fn to_vec(&self) -> Vec<f32> {
        self.deref().to_vec()
    }
}

impl Deref for Vectors {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.0 {
            Inner::Heap(v) => v,
            Inner::Mapped(s) => {
                // The file holds whole f32 values written by `VectorSink`, and a mapping is
                // page-aligned, so aligned for f32.
                bytemuck::cast_slice(&s.pages.map[..])
            }
        }
    }
}

impl Default for Vectors {
    /// No vectors (on the heap).
    fn default() -> Self {
        Vec::new().into()
    }
}

impl From<Vec<f32>> for Vectors {
    fn from(v: Vec<f32>) -> Self {
        Vectors(Inner::Heap(v))
    }
}

impl Clone for Vectors {
    /// A heap copy (a clone of a spilled store is not spilled).
    fn clone(&self) -> Self {
        Vectors(Inner::Heap(self.to_vec()))
    }
}

/// Where the reader puts rows.
pub(crate) enum VectorSink {
    Heap(Vec<f32>),
    /// Rows checked and counted, not kept (`tripmine inspect`): values seen.
    Discard(usize),
    File {
        out: BufWriter<File>,
        values: usize,
        budget: usize,
    },
}

impl VectorSink {
    /// A sink on the heap.
    pub(crate) fn heap() -> Self {
        VectorSink::Heap(Vec::new())
    }

    /// A sink into an unnamed scratch file in `dir`; once mapped, at most `budget` bytes of it
    /// stay resident between [`Vectors::drop_pages_over_budget`] calls.
    pub(crate) fn spill(dir: &Path, budget: usize) -> Result<Self> {
        let file = tempfile::tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
        tracing::info!(dir = %dir.display(), "vectors spill to a scratch file");
        Ok(VectorSink::File {
            out: BufWriter::with_capacity(1 << 20, file),
            values: 0,
            budget,
        })
    }

    pub(crate) fn reserve(&mut self, values: usize) {
        if let VectorSink::Heap(v) = self {
            v.reserve(values);
        }
    }

    pub(crate) fn extend(&mut self, row: &[f32]) -> Result<()> {
        match self {
            VectorSink::Heap(v) => v.extend_from_slice(row),
            VectorSink::Discard(values) => *values += row.len(),
            VectorSink::File { out, values, .. } => {
                out.write_all(bytemuck::cast_slice(row))
                    .map_err(|e| Error::io(Path::new("<scratch>"), e))?;
                *values += row.len();
            }
        }
        Ok(())
    }

    /// Values written so far.
    pub(crate) fn len(&self) -> usize {
        match self {
            VectorSink::Heap(v) => v.len(),
            VectorSink::Discard(values) => *values,
            VectorSink::File { values, .. } => *values,
        }
    }

    pub(crate) fn finish(self) -> Result<Vectors> {
        match self {
            VectorSink::Heap(v) => Ok(v.into()),
            VectorSink::Discard(_) => Ok(Vec::new().into()),
            VectorSink::File {
                out,
                values,
                budget,
            } => {
                let scratch = Path::new("<scratch>");
                let file = out
                    .into_inner()
                    .map_err(|e| Error::io(scratch, e.into_error()))?;
                if values == 0 {
                    return Ok(Vec::new().into());
                }
                // Evict what writing left in the page cache: it sits in large folios, and the
                // kernel maps a whole folio around each fault, so a few random reads would map
                // most of the file. Read back on demand with random-access advice, pages come
                // in one at a time.
                {
                    use std::os::fd::AsRawFd;
                    file.sync_data().map_err(|e| Error::io(scratch, e))?;
                    // SAFETY: a valid descriptor; advice has no memory effects on this process.
                    unsafe {
                        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
                        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
                    }
                }
                // SAFETY: the file is private to this process (unnamed) and never written again.
                let map =
                    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(scratch, e))?;
                let _ = map.advise(memmap2::Advice::Random);
                Vectors::mapped(map, file, budget).map_err(|e| Error::io(scratch, e))
            }
        }
    }
}

impl Vectors {
    /// A store on `map` of `file`, whose resident pages are kept within `budget` bytes.
    fn mapped(map: memmap2::Mmap, file: File, budget: usize) -> std::io::Result<Vectors> {
        let pages = Arc::new(MappedPages {
            map,
            budget: budget.into(),
            baseline: file_backed_resident_bytes(),
        });
        let watch = watch(Arc::clone(&pages))?;
        Ok(Vectors(Inner::Mapped(Spill {
            pages,
            file,
            watch: Some(watch),
        })))
    }

    /// The `values` row-major `f32` values of a file written by another process (a
    /// distributed run's prepared table), mapped read-only: nothing is read until used, and
    /// its resident pages are kept within `budget` bytes as a spilled store's are.
    pub(crate) fn map_file(path: &Path, values: usize, budget: usize) -> Result<Vectors> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != values as u64 * 4 {
            return Err(Error::BadData(format!(
                "{}: {len} bytes, expected {} ({values} f32 values); the prepared table is \
                 incomplete or from another plan",
                path.display(),
                values as u64 * 4
            )));
        }
        if values == 0 {
            return Ok(Vec::new().into());
        }
        // SAFETY: the plan writes the file under a temporary name and renames it into place
        // complete; nothing writes it afterwards (a new plan replaces the folder).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Vectors::mapped(map, file, budget).map_err(|e| Error::io(path, e))
    }
}

/// Starts the thread that keeps a spilled store's resident pages within its budget on paths
/// that read the mapping without sweeping it (a row here and there, over and over).
fn watch(
    pages: Arc<MappedPages>,
) -> std::io::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tripmine-spill-watch".into())
        .stack_size(64 << 10)
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(WATCH_INTERVAL)
            {
                pages.drop_over_budget();
            }
        })?;
    Ok((stop, thread))
}

/// File-backed resident bytes of this process (`RssFile`, the `shared` field of statm).
fn file_backed_resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    pages * page
}
