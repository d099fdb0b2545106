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
    /// Where the file is (a [`ReorderedRows`] copy goes beside it).
    dir: std::path::PathBuf,
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
        read_rows_at(
            &spill.file,
            rows,
            None,
            dim * 4,
            bytemuck::cast_slice_mut(&mut out),
        )?;
        Ok(out)
    }

    /// A spilled store's rows copied to a second scratch file beside it, ordered by `key`
    /// (then by row): see [`ReorderedRows`]. Written in passes over the store, each filling a
    /// buffer of at most `buffer` bytes of the copy. `None` for a store on the heap.
    pub fn reordered_copy(
        &self,
        dim: usize,
        key: &[u32],
        buffer: usize,
    ) -> Result<Option<ReorderedRows>> {
        use rayon::prelude::*;
        let Inner::Mapped(spill) = &self.0 else {
            return Ok(None);
        };
        let rows = key.len();
        let row_bytes = dim * 4;
        debug_assert_eq!(rows * dim, self.len());
        // Positions by a counting sort on the keys (rows of a key keep their order).
        let keys = key.iter().max().map_or(0, |&k| k as usize + 1);
        let mut next = vec![0u32; keys + 1];
        for &k in key {
            next[k as usize + 1] += 1;
        }
        for k in 0..keys {
            next[k + 1] += next[k];
        }
        let at: Vec<u32> = key
            .iter()
            .map(|&k| {
                let slot = &mut next[k as usize];
                *slot += 1;
                *slot - 1
            })
            .collect();
        drop(next);
        let scratch = Path::new("<scratch>");
        let file = tempfile::tempfile_in(&spill.dir).map_err(|e| Error::io(&spill.dir, e))?;
        file.set_len((rows * row_bytes) as u64)
            .map_err(|e| Error::io(scratch, e))?;
        // Each pass reads the whole store in order (the page cache serves it at memory speed)
        // and keeps the rows whose positions fall in the part of the copy at hand.
        const SOURCE_ROWS: usize = 4096;
        let part_rows = (buffer / row_bytes).clamp(SOURCE_ROWS, rows.max(SOURCE_ROWS));
        let mut part = vec![0u8; part_rows.min(rows) * row_bytes];
        for first in (0..rows).step_by(part_rows) {
            let end = (first + part_rows).min(rows);
            let dst = SharedOut::new(&mut part[..(end - first) * row_bytes]);
            (0..rows.div_ceil(SOURCE_ROWS))
                .into_par_iter()
                .try_for_each_init(Vec::new, |buf: &mut Vec<u8>, chunk| {
                    let lo = chunk * SOURCE_ROWS;
                    let hi = (lo + SOURCE_ROWS).min(rows);
                    let wanted = at[lo..hi]
                        .iter()
                        .any(|&p| (first..end).contains(&(p as usize)));
                    if !wanted {
                        return Ok(());
                    }
                    buf.resize((hi - lo) * row_bytes, 0);
                    spill
                        .file
                        .read_exact_at(buf, (lo * row_bytes) as u64)
                        .map_err(|e| Error::io(scratch, e))?;
                    for (i, &p) in at[lo..hi].iter().enumerate() {
                        let p = p as usize;
                        if (first..end).contains(&p) {
                            let row = &buf[i * row_bytes..(i + 1) * row_bytes];
                            // SAFETY: positions are distinct (a permutation), so no two rows
                            // are written to the same place.
                            unsafe { dst.write((p - first) * row_bytes, row) };
                        }
                    }
                    Ok::<_, Error>(())
                })?;
            file.write_all_at(
                &part[..(end - first) * row_bytes],
                (first * row_bytes) as u64,
            )
            .map_err(|e| Error::io(scratch, e))?;
        }
        Ok(Some(ReorderedRows { file, at, dim }))
    }

    /// A copy on the heap.
    pub fn to_vec(&self) -> Vec<f32> {
        self.deref().to_vec()
    }
}

/// What a sweep over rows that may live in a spilled store tells the store as it goes.
/// The mapping carries random-access advice (no readahead, so that scattered faults do not
/// map whole folios), and a system that reclaims cold page cache (DAMON, a container's
/// limit) may have evicted what an earlier stage read: without being told what comes next,
/// a sweep would bring each page back with its own 4 KiB read.
pub trait Sweeper: Sync {
    /// `next` will be read soon: start reading it into the page cache.
    fn ahead(&self, next: &[f32]);
    /// A part was read: drop the pages mapped past the store's budget.
    fn swept(&self);
}

impl Sweeper for Vectors {
    fn ahead(&self, next: &[f32]) {
        use std::os::fd::AsRawFd;
        let Inner::Mapped(spill) = &self.0 else {
            return;
        };
        // Only a part of the mapping (not, say, a normalised copy of it).
        let base = spill.pages.map.as_ptr() as usize;
        let start = next.as_ptr() as usize;
        let len = std::mem::size_of_val(next);
        if start < base || start + len > base + spill.pages.map.len() || len == 0 {
            return;
        }
        // SAFETY: a valid descriptor; the advice starts reads into the page cache and maps
        // nothing into this process.
        unsafe {
            libc::posix_fadvise(
                spill.file.as_raw_fd(),
                (start - base) as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    fn swept(&self) {
        self.drop_pages_over_budget();
    }
}

/// Rows on the heap: nothing to tell.
impl Sweeper for () {
    fn ahead(&self, _: &[f32]) {}
    fn swept(&self) {}
}

/// `values` in chunks of `chunk` values (at least one) for a sweep in order: each chunk is
/// read ahead while the one before it is in use, and the pages swept are dropped past the
/// budget once each chunk is done.
pub fn sweep<'a>(values: &'a [f32], chunk: usize, by: &'a dyn Sweeper) -> Sweep<'a> {
    Sweep {
        chunks: values.chunks(chunk.max(1)).peekable(),
        by,
        started: false,
    }
}

/// See [`sweep`].
pub struct Sweep<'a> {
    chunks: std::iter::Peekable<std::slice::Chunks<'a, f32>>,
    by: &'a dyn Sweeper,
    started: bool,
}

impl<'a> Iterator for Sweep<'a> {
    type Item = &'a [f32];

    fn next(&mut self) -> Option<&'a [f32]> {
        if self.started {
            self.by.swept();
        }
        let current = self.chunks.next()?;
        if !self.started {
            self.by.ahead(current);
            self.started = true;
        }
        if let Some(next) = self.chunks.peek() {
            self.by.ahead(next);
        }
        Some(current)
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

/// A second copy of a spilled store's rows in another order, read with `pread`: where an
/// IVF index's anchors are taken list by list, the rows a stretch of them reads back (their
/// candidates, near their own lists) lie in a few long runs of the copy, read in one call
/// each, instead of one call a row scattered over the store.
#[derive(Debug)]
pub struct ReorderedRows {
    /// Unnamed (removed by the system when the run ends), beside the store's file.
    file: File,
    /// Each row's position in the copy.
    at: Vec<u32>,
    dim: usize,
}

impl ReorderedRows {
    /// Each row's position in the copy: ascending in the key, then the row.
    pub fn positions(&self) -> &[u32] {
        &self.at
    }

    /// Rows `rows` (any order, each once), copied into one buffer in that order, as
    /// [`Vectors::gather_rows`] gives them.
    pub fn gather_rows(&self, rows: &[u32]) -> Result<Vec<f32>> {
        let mut by_position: Vec<(u32, u32)> = rows
            .iter()
            .enumerate()
            .map(|(slot, &r)| (self.at[r as usize], slot as u32))
            .collect();
        by_position.sort_unstable();
        let (positions, slots): (Vec<u32>, Vec<u32>) = by_position.into_iter().unzip();
        let mut out = vec![0f32; rows.len() * self.dim];
        read_rows_at(
            &self.file,
            &positions,
            Some(&slots),
            self.dim * 4,
            bytemuck::cast_slice_mut(&mut out),
        )?;
        Ok(out)
    }
}

/// A buffer that parallel tasks write disjoint rows of.
struct SharedOut {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: tasks write disjoint ranges only (see `write`), while the buffer is borrowed.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(out: &mut [u8]) -> SharedOut {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// `len` bytes from `at`, to be written by one task.
    ///
    /// # Safety
    /// No other task writes or reads them while the slice lives, and the buffer given to
    /// [`SharedOut::new`] outlives it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [u8] {
        assert!(at + len <= self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }

    /// # Safety
    /// No other task writes or reads `at..at + bytes.len()` meanwhile, and the buffer given
    /// to [`SharedOut::new`] outlives the call.
    unsafe fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) };
    }
}

/// Reads the rows at positions `at` (ascending, each once) of `file` (rows of `row_bytes`)
/// into `out`: the `i`-th into slot `slots[i]` (distinct), or slot `i` without `slots`.
fn read_rows_at(
    file: &File,
    at: &[u32],
    slots: Option<&[u32]>,
    row_bytes: usize,
    out: &mut [u8],
) -> Result<()> {
    use rayon::prelude::*;
    const ROWS_PER_TASK: usize = 1024;
    // A system call costs about what copying a few KiB does: rows this close are read in one
    // call with the rows between them, up to a span of `MAX_SPAN` bytes (on E3, 5,000,000
    // rows of 256 bytes, this made mining 8% faster than one call per run of consecutive
    // rows).
    const GAP_BYTES: usize = 4096;
    const MAX_SPAN: usize = 1 << 20;
    let gap = (GAP_BYTES / row_bytes) as u32 + 1;
    let max_span = (MAX_SPAN / row_bytes).max(1) as u32;
    debug_assert!(at.is_sorted());
    let dst = SharedOut::new(out);
    let slot = |i: usize| slots.map_or(i, |s| s[i] as usize);
    at.par_chunks(ROWS_PER_TASK)
        .enumerate()
        .try_for_each(|(task, at)| {
            let base = task * ROWS_PER_TASK;
            let mut span_buf: Vec<u8> = Vec::new();
            let mut i = 0;
            while i < at.len() {
                let first = at[i];
                let mut end = i + 1;
                while end < at.len() && at[end] - at[end - 1] <= gap && at[end] - first < max_span {
                    end += 1;
                }
                let span = (at[end - 1] - first + 1) as usize;
                let offset = first as u64 * row_bytes as u64;
                let read = |buf: &mut [u8]| {
                    file.read_exact_at(buf, offset)
                        .map_err(|e| Error::io(Path::new("<scratch>"), e))
                };
                if slots.is_none() && span == end - i {
                    // Consecutive rows into consecutive slots: straight into `out`.
                    // SAFETY: slots `base + i..base + end` are this task's alone.
                    read(unsafe { dst.slice((base + i) * row_bytes, span * row_bytes) })?;
                    i = end;
                    continue;
                }
                span_buf.resize(span * row_bytes, 0);
                read(&mut span_buf)?;
                for (t, &p) in at[i..end].iter().enumerate() {
                    let from = (p - first) as usize * row_bytes;
                    // SAFETY: slots are distinct, so each task writes rows no other touches;
                    // `out` is borrowed for the whole call.
                    unsafe {
                        dst.write(
                            slot(base + i + t) * row_bytes,
                            &span_buf[from..from + row_bytes],
                        )
                    };
                }
                i = end;
            }
            Ok::<_, Error>(())
        })
}

/// Asks the kernel to back `region` (not yet touched) with 2 MiB pages where it can. The
/// exact engine reads rows of the table at random at the end of each anchor (a thousand an
/// anchor under `--positives all`): with 4 KiB pages nearly each of those reads also missed
/// the TLB once the table outgrew its reach. Advice only: where the system says no (huge pages
/// off), nothing changes.
fn advise_huge_pages<T>(region: &mut [std::mem::MaybeUninit<T>]) {
    const PAGE: usize = 4096;
    let (at, len) = (region.as_mut_ptr() as usize, std::mem::size_of_val(region));
    let (start, end) = (at.next_multiple_of(PAGE), (at + len) / PAGE * PAGE);
    if end >= start + (2 << 20) {
        // SAFETY: advice on whole pages inside this allocation; it changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
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
        dir: std::path::PathBuf,
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
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn reserve(&mut self, values: usize) {
        if let VectorSink::Heap(v) = self {
            v.reserve(values);
            advise_huge_pages(v.spare_capacity_mut());
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
                dir,
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
                Vectors::mapped(map, file, budget, dir).map_err(|e| Error::io(scratch, e))
            }
        }
    }
}

impl Vectors {
    /// A store on `map` of `file`, whose resident pages are kept within `budget` bytes.
    fn mapped(
        map: memmap2::Mmap,
        file: File,
        budget: usize,
        dir: std::path::PathBuf,
    ) -> std::io::Result<Vectors> {
        let pages = Arc::new(MappedPages {
            map,
            budget: budget.into(),
            baseline: file_backed_resident_bytes(),
        });
        let watch = watch(Arc::clone(&pages))?;
        Ok(Vectors(Inner::Mapped(Spill {
            pages,
            file,
            dir,
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
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        Vectors::mapped(map, file, budget, dir).map_err(|e| Error::io(path, e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// A spilled store of `rows` rows whose values name their row and column.
    fn spilled(dir: &Path, rows: usize, dim: usize) -> Vectors {
        let mut sink = VectorSink::spill(dir, usize::MAX).unwrap();
        for r in 0..rows {
            let row: Vec<f32> = (0..dim).map(|j| (r * dim + j) as f32).collect();
            sink.extend(&row).unwrap();
        }
        let vectors = sink.finish().unwrap();
        assert!(vectors.is_spilled());
        vectors
    }

    /// Which pages of `part` of `store`'s mapping are in the page cache.
    fn cached_pages(store: &Vectors, part: std::ops::Range<usize>) -> Vec<bool> {
        let page = 4096;
        let base = store.as_ptr() as usize;
        let (lo, hi) = (part.start * 4 / page, (part.end * 4).div_ceil(page));
        let mut cached = vec![0u8; hi - lo];
        // SAFETY: the range lies in the store's live mapping, page-aligned; `cached` has a
        // byte a page.
        let ok = unsafe {
            libc::mincore(
                (base + lo * page) as *mut libc::c_void,
                (hi - lo) * page,
                cached.as_mut_ptr(),
            )
        };
        assert_eq!(ok, 0, "mincore");
        cached.iter().map(|c| c & 1 == 1).collect()
    }

    #[test]
    fn reading_ahead_brings_a_part_of_a_spilled_store_into_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 64;
        // 1 MiB: 256 pages.
        let store = spilled(dir.path(), 4096, dim);
        let part = 1024 * dim..2048 * dim;
        if cached_pages(&store, part.clone()).iter().any(|&c| c) {
            // The spill's pages were not evicted (a file system that keeps them): nothing
            // to read ahead here.
            eprintln!("skipped: the scratch file system keeps written pages cached");
            return;
        }
        store.ahead(&store[part.clone()]);
        let started = std::time::Instant::now();
        while cached_pages(&store, part.clone()).iter().any(|&c| !c) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the part was not read ahead"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(&store[part.start..part.start + 2], &[65536.0, 65537.0]);
    }

    #[test]
    fn a_slice_outside_the_store_is_not_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        // Freshly spilled: writing it left nothing in the page cache.
        let store = spilled(dir.path(), 4096, 64);
        if cached_pages(&store, 0..4096 * 64).iter().any(|&c| c) {
            eprintln!("skipped: the scratch file system keeps written pages cached");
            return;
        }
        let elsewhere = vec![1f32; 1024 * 64];
        store.ahead(&elsewhere);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(cached_pages(&store, 0..4096 * 64).iter().all(|&c| !c));
    }

    /// Records what a sweep tells it.
    #[derive(Default)]
    struct Told(std::sync::Mutex<Vec<String>>);

    impl Sweeper for Told {
        fn ahead(&self, next: &[f32]) {
            self.0.lock().unwrap().push(format!("ahead {}", next[0]));
        }
        fn swept(&self) {
            self.0.lock().unwrap().push("swept".into());
        }
    }

    #[test]
    fn a_sweep_reads_each_chunk_ahead_before_the_one_before_it_is_used_and_drops_after_each() {
        let values: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let told = Told::default();
        let mut seen = Vec::new();
        for chunk in sweep(&values, 4, &told) {
            told.0.lock().unwrap().push(format!("use {}", chunk[0]));
            seen.extend_from_slice(chunk);
        }
        assert_eq!(seen, values);
        assert_eq!(
            told.0.into_inner().unwrap(),
            [
                "ahead 0", "ahead 4", "use 0", "swept", "ahead 8", "use 4", "swept", "use 8",
                "swept"
            ]
        );
    }

    #[test]
    fn a_copy_in_key_order_gathers_the_rows_the_store_holds() {
        let dir = tempfile::tempdir().unwrap();
        // Rows of 20 bytes: a few hundred rows apart are read in one call.
        let (rows, dim) = (10_000, 5);
        let store = spilled(dir.path(), rows, dim);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Keys with gaps (some never used); a buffer that takes several passes.
        let key: Vec<u32> = (0..rows).map(|_| rng.random_range(0..37) * 3).collect();
        let copy = store.reordered_copy(dim, &key, 1).unwrap().unwrap();
        let at = copy.positions();
        let mut by_position: Vec<usize> = (0..rows).collect();
        by_position.sort_by_key(|&r| at[r]);
        assert!(
            by_position
                .windows(2)
                .all(|w| (key[w[0]], w[0]) < (key[w[1]], w[1])),
            "positions ascend with the key, then the row"
        );
        let mut wanted: Vec<Vec<u32>> = vec![
            Vec::new(),
            vec![0],
            vec![rows as u32 - 1, 0],
            (0..rows as u32).collect(),
            (0..rows as u32).rev().step_by(3).collect(),
        ];
        for _ in 0..20 {
            let n = rng.random_range(1..2000);
            let mut rows: Vec<u32> = (0..rows as u32).collect();
            for i in 0..n {
                let j = rng.random_range(i..rows.len());
                rows.swap(i, j);
            }
            rows.truncate(n);
            wanted.push(rows);
        }
        for rows in wanted {
            let got = copy.gather_rows(&rows).unwrap();
            let mut sorted = rows.clone();
            sorted.sort_unstable();
            let from_store = store.gather_rows(&sorted, dim).unwrap();
            for (i, &r) in rows.iter().enumerate() {
                let want: Vec<f32> = (0..dim).map(|j| (r as usize * dim + j) as f32).collect();
                assert_eq!(
                    &got[i * dim..(i + 1) * dim],
                    &want[..],
                    "row {r} from the copy"
                );
                let s = sorted.binary_search(&r).unwrap();
                assert_eq!(&from_store[s * dim..(s + 1) * dim], &want[..], "row {r}");
            }
        }
    }

    #[test]
    fn a_store_on_the_heap_has_no_copy() {
        let store: Vectors = vec![1.0, 2.0, 3.0, 4.0].into();
        assert!(store.reordered_copy(2, &[1, 0], 1 << 20).unwrap().is_none());
    }
}
