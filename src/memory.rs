//! Memory: what the process holds now and at its peak, read from `/proc/self/status`.
//!
//! In: nothing. Out: [`Resident`] figures for the stage logs and for the plan a memory limit
//! is checked against (Linux only; zeros elsewhere).

/// Resident memory of this process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// Resident set now (`VmRSS`).
    pub now: u64,
    /// Highest resident set so far (`VmHWM`).
    pub peak: u64,
}

impl Resident {
    /// The figures now.
    pub fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        Resident {
            now: field("VmRSS"),
            peak: field("VmHWM"),
        }
    }
}

/// Bytes as MiB, for logs.
pub fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Kept out of every budget: the allocator's slack (glibc keeps freed pieces in per-thread
/// arenas between trims), thread stacks, BLAS and FAISS scratch of fixed size (a Flat search
/// multiplies in blocks of 4,096 x 1,024 floats, 16 MiB; OpenBLAS packs panels in buffers of
/// its own), and pages of the program's code touched for the first time.
pub const RESERVE: u64 = 48 << 20;

/// The least scratch a run is given for the buffers that scale (gathered rows, candidate
/// lists, results of a window of anchors, mapped pages): below it, a limit is refused.
pub const MIN_SCRATCH: u64 = 16 << 20;

/// Bytes per row the table holds besides its vectors, when nothing better is known: ids and
/// labels (8 bytes each as integers), label codes, squared norms and the label groups (4 each).
pub const TABLE_BYTES_PER_ROW: u64 = 28;

/// What a memory limit leaves for the buffers that scale with the work once the process, the
/// table and the index are resident, and its shares. Measured, not estimated: the limit less
/// the resident set at the time and [`RESERVE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratch {
    bytes: u64,
}

impl Scratch {
    /// The scratch `limit` leaves now; at least [`MIN_SCRATCH`] (a run below that was refused
    /// before its index was built).
    pub fn measured(limit: u64) -> Scratch {
        if unchecked() {
            return Scratch { bytes: limit / 4 };
        }
        let held = Resident::now().now;
        Scratch {
            bytes: limit
                .saturating_sub(held)
                .saturating_sub(RESERVE)
                .max(MIN_SCRATCH),
        }
    }

    /// Scratch of `bytes` (tests).
    pub fn of(bytes: u64) -> Scratch {
        Scratch { bytes }
    }

    /// All of it.
    pub fn bytes(self) -> usize {
        self.bytes as usize
    }

    /// Rows of a spilled table read into memory for a stretch of work.
    pub fn gathered_rows(self) -> usize {
        (self.bytes / 4) as usize
    }

    /// One search call: candidate lists, FAISS's heaps and lookup tables.
    pub fn search(self) -> usize {
        (self.bytes / 4) as usize
    }

    /// Results of a window of anchors held until written (twice: mined, then reordered).
    pub fn results(self) -> usize {
        (self.bytes / 4) as usize
    }

    /// What the negative reuse cap counts in one pass over the mined blocks (the rest of the
    /// whole, beside the other shares).
    pub fn cross_anchor(self) -> usize {
        (self.bytes / 8) as usize
    }

    /// Pages of a spilled table's mapping left resident between drops.
    pub fn mapped_pages(self) -> usize {
        (self.bytes / 8) as usize
    }
}

/// Tests set `TRIPMINE_UNCHECKED_MEMORY_LIMIT=1` to spill tiny tables under limits of a few
/// KiB (so that every spilled path runs in milliseconds): no limit is refused, and the
/// scratch is a quarter of the limit rather than measured, so budgets are a few rows.
pub(crate) fn unchecked() -> bool {
    std::env::var_os("TRIPMINE_UNCHECKED_MEMORY_LIMIT").is_some_and(|v| v == "1")
}

/// Bytes an index built from a FAISS factory string holds for `rows` rows of `dim` values,
/// from its layout: codes and ids of the inverted lists, centroids, graph links, stored
/// vectors. An estimate within a few percent for the layouts tripmine uses (`Flat` holds
/// nothing under a memory limit: it searches the table in place); unknown parts count as
/// full vectors.
pub fn index_bytes(factory: &str, rows: u64, dim: u64) -> u64 {
    let mut per_row = 0u64;
    let mut fixed = 0u64;
    let mut coded = false;
    for part in factory.split(',').map(str::trim) {
        let number = |prefix: &str| -> Option<u64> {
            let digits: String = part
                .strip_prefix(prefix)?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        if let Some(lists) = number("IVF") {
            // Centroids, and an id per row in its list.
            fixed += lists * dim * 4;
            per_row += 8;
        } else if let Some(m) = number("HNSW") {
            // Links of level 0 (2 m) and the levels above (m, for a 1 / m share of rows).
            per_row += 2 * m * 4 + 4 * 4;
        } else if let Some(m) = number("PQ") {
            let bits = part
                .split_once('x')
                .and_then(|(_, b)| b.trim_end_matches("fs").parse::<u64>().ok())
                .unwrap_or(8);
            per_row += (m * bits).div_ceil(8);
            // Codebooks.
            fixed += dim * (1 << bits) * 4;
            coded = true;
        } else if part.starts_with("SQ") {
            per_row += match part {
                "SQ4" => dim.div_ceil(2),
                "SQfp16" | "SQbf16" => dim * 2,
                _ => dim,
            };
            coded = true;
        } else if let Some(out) = number("OPQ").or_else(|| number("PCA")) {
            fixed += dim * dim.max(out) * 4;
        } else if part.starts_with("RFlat") || part.starts_with("Refine") {
            per_row += dim * 4;
        } else if part == "Flat" {
            // The storage of an IVF or HNSW index; alone, the table is searched in place.
            if factory.contains("IVF") || factory.contains("HNSW") {
                per_row += dim * 4;
            }
            coded = true;
        }
    }
    if !coded && factory.contains("HNSW") {
        // `HNSWm` alone stores the vectors.
        per_row += dim * 4;
    }
    if factory.contains("IVF") {
        // The inverted lists grow as batches of rows are added, each list by doubling its
        // buffer, and the buffers they leave behind stay in the heap: measured on 1,000,000
        // rows (IVF4096,PQ32x4fs), the built index held 1.8 times its codes and ids.
        per_row *= 2;
    }
    rows * per_row + fixed
}

/// Refuses a limit below what a run cannot do without, naming the parts. `parts` are
/// (what, bytes) pairs, [`MIN_SCRATCH`] and [`RESERVE`] are added.
pub fn check_minimum(limit: u64, parts: &[(String, u64)]) -> crate::Result<()> {
    check_minimum_of("this table and index", limit, parts)
}

/// [`check_minimum`] for work other than mining, named `subject` (e.g. "this comparison").
pub fn check_minimum_of(subject: &str, limit: u64, parts: &[(String, u64)]) -> crate::Result<()> {
    if unchecked() {
        return Ok(());
    }
    let needed: u64 = parts.iter().map(|p| p.1).sum::<u64>() + MIN_SCRATCH + RESERVE;
    if needed <= limit {
        return Ok(());
    }
    let named: Vec<String> = parts
        .iter()
        .map(|(what, bytes)| format!("{what} {} MiB", bytes.div_ceil(1 << 20)))
        .collect();
    Err(crate::Error::Config(format!(
        "--memory-limit {} MiB is below what this run cannot do without: {}, buffers at \
         least {} MiB and {} MiB kept for threads and the allocator; the smallest limit for \
         {subject} is {} MiB",
        limit >> 20,
        named.join(", "),
        MIN_SCRATCH >> 20,
        RESERVE >> 20,
        needed.div_ceil(1 << 20),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bytes_count_codes_ids_and_centroids() {
        // 4-bit codes of 64 sub-quantizers: 32 bytes, and an 8-byte id, per row, in lists
        // that may hold twice that; centroids and codebooks once.
        let ivf_pq = index_bytes("IVF4096,PQ64x4fs", 1_000_000, 128);
        assert_eq!(ivf_pq, 2 * 40 * 1_000_000 + 4096 * 128 * 4 + 128 * 16 * 4);
        assert_eq!(
            index_bytes("IVF1024,SQ8", 1000, 64),
            2 * 1000 * (64 + 8) + 1024 * 64 * 4
        );
        assert_eq!(
            index_bytes("IVF16,Flat", 1000, 8),
            2 * 1000 * (32 + 8) + 16 * 8 * 4
        );
        // Flat searches the table in place under a limit.
        assert_eq!(index_bytes("Flat", 1_000_000, 128), 0);
        // HNSW stores the vectors beside its links.
        assert!(index_bytes("HNSW32", 1000, 64) >= 1000 * (64 * 4 + 2 * 32 * 4));
        assert!(index_bytes("HNSW32,PQ16", 1000, 64) < index_bytes("HNSW32", 1000, 64));
    }

    #[test]
    fn a_limit_below_the_parts_is_refused_naming_each_and_the_smallest_limit() {
        let parts = vec![
            ("the process and the table hold".to_string(), 70 << 20),
            ("the index IVF4096,PQ64x4fs needs".to_string(), 42 << 20),
        ];
        let err = check_minimum(128 << 20, &parts).unwrap_err().to_string();
        assert!(
            err.contains("the index IVF4096,PQ64x4fs needs 42 MiB"),
            "{err}"
        );
        let smallest = (70 + 42) + (MIN_SCRATCH >> 20) + (RESERVE >> 20);
        assert!(
            err.contains(&format!(
                "smallest limit for this table and index is {smallest} MiB"
            )),
            "{err}"
        );
        assert!(check_minimum(smallest << 20, &parts).is_ok());
    }

    #[test]
    fn scratch_shares_stay_within_the_whole() {
        let s = Scratch::of(64 << 20);
        let shares =
            s.gathered_rows() + s.search() + s.results() + s.mapped_pages() + s.cross_anchor();
        assert!(shares <= s.bytes());
    }
}
