//! What a job does to its process beyond its own data, kept apart so that a host (the binary, a
//! trainer that embeds the library, the Python package) decides it: the threads of the native
//! libraries (FAISS's OpenMP, OpenBLAS), handing freed heap back to the system, and the OpenMP
//! wait policy.
//!
//! The library changes nothing process-wide on its own: thread caps are guards that restore the
//! previous setting when they drop, and the heap is trimmed between stages only when the host
//! opted in ([`release_free_heap_between_stages`], which the binary does) or the job runs under
//! a memory limit (the freed pages count in the resident set the limit bounds).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

unsafe extern "C" {
    // FAISS is linked with libgomp; both apply to the calling thread's parallel regions.
    fn omp_set_num_threads(n: c_int);
    fn omp_get_max_threads() -> c_int;
}

/// OpenBLAS's thread count getter and setter, where the BLAS linked is OpenBLAS: the BLAS is
/// whatever `libblas.so.3` points to and only OpenBLAS has them, so they are looked up rather
/// than linked. First in the global scope (a program linked with it), then in every library
/// loaded: a Python extension module and its libraries are loaded privately (`RTLD_LOCAL`),
/// out of the global scope's sight, and a repaired wheel's bundled OpenBLAS has a name of its
/// own (`libopenblasp-r0-1a2b3c4d.so`).
fn openblas_threads() -> Option<(extern "C" fn() -> c_int, extern "C" fn(c_int))> {
    // SAFETY: dlsym with NUL-terminated names on valid handles; the symbols, if found, have
    // these signatures (OpenBLAS's `openblas_get_num_threads` and `openblas_set_num_threads`).
    unsafe {
        let found = openblas_symbols(libc::RTLD_DEFAULT).or_else(loaded_openblas)?;
        let get = std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> c_int>(found.0);
        let set = std::mem::transmute::<*mut libc::c_void, extern "C" fn(c_int)>(found.1);
        Some((get, set))
    }
}

type Symbols = (*mut libc::c_void, *mut libc::c_void);

/// OpenBLAS's two symbols in `handle`, if it has them.
///
/// # Safety
/// `handle` is `RTLD_DEFAULT` or a handle from `dlopen`.
unsafe fn openblas_symbols(handle: *mut libc::c_void) -> Option<Symbols> {
    // SAFETY: as the caller promises; NUL-terminated names.
    let (get, set) = unsafe {
        (
            libc::dlsym(handle, c"openblas_get_num_threads".as_ptr()),
            libc::dlsym(handle, c"openblas_set_num_threads".as_ptr()),
        )
    };
    (!get.is_null() && !set.is_null()).then_some((get, set))
}

/// OpenBLAS's symbols in the first loaded library that has them.
fn loaded_openblas() -> Option<Symbols> {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        found: *mut libc::c_void,
    ) -> c_int {
        // SAFETY: the loader hands a valid `info` whose name is NUL-terminated (empty for the
        // program itself); `found` is the `Option<Symbols>` passed below. dlopen with
        // RTLD_NOLOAD only returns a library already loaded (it loads none); the handle is
        // one more reference to it, kept so that the symbols stay valid.
        unsafe {
            let name = (*info).dlpi_name;
            if name.is_null() || *name == 0 {
                return 0;
            }
            let handle = libc::dlopen(name, libc::RTLD_NOLOAD | libc::RTLD_LAZY);
            if handle.is_null() {
                return 0;
            }
            match openblas_symbols(handle) {
                Some(symbols) => {
                    *found.cast::<Option<Symbols>>() = Some(symbols);
                    1
                }
                None => {
                    libc::dlclose(handle);
                    0
                }
            }
        }
    }
    let mut found: Option<Symbols> = None;
    // SAFETY: `visit` only writes through the pointer to `found`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&raw mut found).cast());
    }
    found
}

fn clamp(n: usize) -> c_int {
    n.clamp(1, c_int::MAX as usize) as c_int
}

/// While alive, OpenBLAS runs on at most `n` threads (where the BLAS linked is OpenBLAS); the
/// count before is restored on drop. OpenBLAS's setting is process-wide, so a host that runs
/// its own BLAS work beside a job shares the cap for the job's duration.
pub struct BlasThreads {
    restore: Option<(extern "C" fn(c_int), c_int)>,
}

impl BlasThreads {
    pub fn cap(n: usize) -> Self {
        let restore = openblas_threads().map(|(get, set)| {
            let before = get();
            set(clamp(n));
            (set, before)
        });
        if restore.is_none() {
            tracing::debug!(
                "the BLAS linked is not OpenBLAS (or not found): its threads are not capped"
            );
        } else {
            tracing::debug!(threads = n, "OpenBLAS threads capped for this job");
        }
        BlasThreads { restore }
    }

    /// One thread: for work that runs its own products in parallel, one per thread.
    pub fn single() -> Self {
        Self::cap(1)
    }
}

impl Drop for BlasThreads {
    fn drop(&mut self) {
        if let Some((set, before)) = self.restore {
            set(before);
        }
    }
}

/// While alive, OpenMP parallel regions (FAISS's) that the calling thread starts use at most
/// `n` threads; the calling thread's setting before is restored on drop.
///
/// OpenMP keeps this per thread: a thread that did not set it (a rayon worker, say) starts
/// regions with as many threads as cores, so every worker of a capped pool must set it
/// ([`set_openmp_threads`] in the pool's start handler).
pub struct OpenMpThreads {
    before: c_int,
}

impl OpenMpThreads {
    pub fn cap(n: usize) -> Self {
        // SAFETY: plain getter and setter of the OpenMP runtime, callable at any time.
        let before = unsafe { omp_get_max_threads() };
        set_openmp_threads(n);
        OpenMpThreads { before }
    }
}

impl Drop for OpenMpThreads {
    fn drop(&mut self) {
        // SAFETY: plain setter of the OpenMP runtime, callable at any time.
        unsafe { omp_set_num_threads(self.before) }
    }
}

/// Caps the OpenMP threads of parallel regions that the calling thread starts, for good: for
/// threads a job owns (its pool's workers).
pub fn set_openmp_threads(n: usize) {
    // SAFETY: plain setter of the OpenMP runtime, callable at any time.
    unsafe { omp_set_num_threads(clamp(n)) }
}

static TRIM_BETWEEN_STAGES: AtomicBool = AtomicBool::new(false);

/// Whether jobs hand the heap the allocator holds but no longer uses back to the system
/// between stages (glibc's `malloc_trim`; default off). The reader's batches, the index's
/// training buffers and each block's lists are freed in pieces that glibc otherwise keeps in
/// its arenas for reuse, and they count in the resident set; a process that only mines wants
/// them returned, a host with its own allocation pattern may not.
pub fn release_free_heap_between_stages(on: bool) {
    TRIM_BETWEEN_STAGES.store(on, Ordering::Relaxed);
}

/// Trims the heap if the host opted in or `bounded` (the job runs under a memory limit).
pub(crate) fn release_free_heap(bounded: bool) {
    if bounded || TRIM_BETWEEN_STAGES.load(Ordering::Relaxed) {
        // SAFETY: malloc_trim only releases free memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Re-executes the running binary once with `OMP_WAIT_POLICY=PASSIVE` unless the caller set a
/// policy. For programs whose process is the job (the binary, the benchmarks); the library
/// never calls it.
///
/// By default FAISS's OpenMP threads spin after each parallel region and fight OpenBLAS's and
/// rayon's threads for the cores: on 2 cores the whole job ran about twice as long. libgomp
/// reads the policy only when it is loaded, before `main`, so it cannot be set from inside.
pub fn reexec_with_passive_openmp() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // `exec` returns only if it failed; the job then runs with the default policy.
    let _ = cmd.args(args).env("OMP_WAIT_POLICY", "PASSIVE").exec();
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Asks every job running in this process to stop: each ends at its next block of anchors
/// (or batch of input rows) with [`crate::Error::Interrupted`], leaving no output half-written
/// (outputs are renamed into place only when complete). For hosts that own the signals (the
/// Python package turns Ctrl-C into this). Jobs that start later are not affected.
pub fn interrupt() {
    if RUNNING.load(Ordering::SeqCst) > 0 {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
}

/// Fails with [`crate::Error::Interrupted`] once [`interrupt`] was called during this job.
pub(crate) fn check_interrupted() -> crate::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Marks a job as running while alive; when the last running job ends, a pending interrupt is
/// cleared, so it never reaches a job started after it.
pub(crate) struct RunningJob(());

impl RunningJob {
    pub(crate) fn start() -> Self {
        RUNNING.fetch_add(1, Ordering::SeqCst);
        RunningJob(())
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::SeqCst) == 1 {
            INTERRUPTED.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_caps_are_restored_when_they_drop() {
        // SAFETY: plain getter of the OpenMP runtime.
        let omp = || unsafe { omp_get_max_threads() };
        let before = omp();
        {
            let _cap = OpenMpThreads::cap(1);
            assert_eq!(omp(), 1);
        }
        assert_eq!(omp(), before);
        if let Some((get, _)) = openblas_threads() {
            let before = get();
            {
                let _cap = BlasThreads::single();
                assert_eq!(get(), 1);
            }
            assert_eq!(get(), before);
        }
    }

    #[test]
    fn an_interrupt_reaches_running_jobs_only() {
        interrupt();
        assert!(
            check_interrupted().is_ok(),
            "no job ran: nothing to interrupt"
        );
        {
            let _job = RunningJob::start();
            assert!(check_interrupted().is_ok());
            interrupt();
            assert!(matches!(
                check_interrupted(),
                Err(crate::Error::Interrupted)
            ));
        }
        assert!(check_interrupted().is_ok(), "cleared when the job ended");
    }
}
