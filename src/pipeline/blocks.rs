//! Mined blocks on disk, written and read back one block at a time: a distributed run's
//! segment files, and a run's blocks held while the reuse cap learns from all of them.
//!
//! In: [`MinedBlock`]s (triplets and anchor records, before the cross-anchor rules). Out: the
//! same blocks, in the order written. A file is a header (magic, a 64-bit id, a number), then
//! per block its record, triplet and neighbour counts and their words, then an end mark and
//! [`FIGURES`] 64-bit figures. Little-endian `u32` words throughout; floats as their bits. A file cut short is an
//! error naming it, never a short read taken for the end.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mine::{
    AnchorBounds, AnchorRecord, CrossAnchorRules, MinedBlock, NeighbourLabels, Triplet,
};

const MAGIC: &[u8; 8] = b"TMSEG002";
/// The record count that marks the end.
const END: u32 = u32::MAX;
const RECORD_WORDS: usize = 22;
const TRIPLET_WORDS: usize = 6;
const NEIGHBOUR_WORDS: usize = 2;
/// 64-bit figures after the end mark (a segment's: its seconds, search seconds, queries).
pub(super) const FIGURES: usize = 3;

/// Writes blocks to a file.
pub(super) struct BlockWriter {
    out: BufWriter<File>,
    /// What errors name.
    dest: PathBuf,
}

impl BlockWriter {
    /// Starts a file on `file` (named `dest` in errors) with its `id` and `number`.
    pub(super) fn new(file: File, dest: &Path, id: u64, number: u32) -> Result<Self> {
        let mut w = BlockWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            dest: dest.to_path_buf(),
        };
        w.bytes(MAGIC)?;
        w.bytes(&id.to_le_bytes())?;
        w.words(&[number, 0])?;
        Ok(w)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .map_err(|e| Error::output(&self.dest, e))
    }

    fn words(&mut self, w: &[u32]) -> Result<()> {
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(&bytes)
    }

    pub(super) fn block(&mut self, block: &MinedBlock) -> Result<()> {
        self.words(&[
            block.anchors.len() as u32,
            block.triplets.len() as u32,
            block.neighbours.len() as u32,
        ])?;
        // A few thousand at a time: a copy of the whole block would double its memory.
        for chunk in block.anchors.chunks(4096) {
            let w: Vec<u32> = chunk.iter().flat_map(record_words).collect();
            self.words(&w)?;
        }
        for chunk in block.triplets.chunks(8192) {
            let w: Vec<u32> = chunk.iter().flat_map(triplet_words).collect();
            self.words(&w)?;
        }
        for chunk in block.neighbours.chunks(8192) {
            let w: Vec<u32> = chunk.iter().flat_map(|&(d, r)| [d.to_bits(), r]).collect();
            self.words(&w)?;
        }
        Ok(())
    }

    /// Writes the end mark and `figures`, flushes, and gives the file back.
    pub(super) fn end(mut self, figures: [u64; FIGURES]) -> Result<File> {
        self.words(&[END, 0, 0])?;
        let bytes: Vec<u8> = figures.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bytes(&bytes)?;
        let dest = self.dest;
        self.out
            .into_inner()
            .map_err(|e| Error::output(&dest, e.into_error()))
    }
}

/// Reads the blocks of a file [`BlockWriter`] wrote.
pub(super) struct BlockReader {
    input: BufReader<File>,
    path: PathBuf,
    /// The file's id and number.
    pub(super) id: u64,
    pub(super) number: u32,
    ended: bool,
}

impl BlockReader {
    /// Reads the header of `file` (named `path` in errors).
    pub(super) fn new(file: File, path: &Path) -> Result<Self> {
        let mut r = BlockReader {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            id: 0,
            number: 0,
            ended: false,
        };
        let mut head = [0u8; 24];
        r.exact(&mut head)
            .map_err(|_| r.bad("not a file of mined blocks"))?;
        if &head[..8] != MAGIC {
            return Err(r.bad("not a file of mined blocks"));
        }
        r.id = u64::from_le_bytes(head[8..16].try_into().expect("eight bytes"));
        r.number = u32::from_le_bytes(head[16..20].try_into().expect("four bytes"));
        Ok(r)
    }

    /// Opens `path` and reads its header.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Self::new(file, path)
    }

    pub(super) fn bad(&self, what: &str) -> Error {
        Error::BadData(format!("{}: {what}", self.path.display()))
    }

    fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.input.read_exact(buf)
    }

    fn words(&mut self, n: usize) -> Result<Vec<u32>> {
        let mut bytes = vec![0u8; 4 * n];
        self.exact(&mut bytes).map_err(|_| self.bad("truncated"))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("four bytes")))
            .collect())
    }

    /// The next block, or `None` at the end mark.
    pub(super) fn next_block(&mut self) -> Result<Option<MinedBlock>> {
        if self.ended {
            return Ok(None);
        }
        let counts = self.words(3)?;
        if counts[0] == END {
            self.ended = true;
            return Ok(None);
        }
        let [records, triplets, neighbours] = [0, 1, 2].map(|i| counts[i] as usize);
        let words = self.words(
            records * RECORD_WORDS + triplets * TRIPLET_WORDS + neighbours * NEIGHBOUR_WORDS,
        )?;
        let (r, rest) = words.split_at(records * RECORD_WORDS);
        let (t, n) = rest.split_at(triplets * TRIPLET_WORDS);
        Ok(Some(MinedBlock {
            anchors: r.chunks_exact(RECORD_WORDS).map(record_of).collect(),
            triplets: t.chunks_exact(TRIPLET_WORDS).map(triplet_of).collect(),
            neighbours: n
                .chunks_exact(NEIGHBOUR_WORDS)
                .map(|w| (f32::from_bits(w[0]), w[1]))
                .collect(),
        }))
    }

    /// The figures after the end mark (every block read), checking nothing follows them.
    pub(super) fn figures(mut self) -> Result<[u64; FIGURES]> {
        while self.next_block()?.is_some() {}
        let mut bytes = [0u8; 8 * FIGURES];
        self.exact(&mut bytes).map_err(|_| self.bad("truncated"))?;
        let mut rest = [0u8; 1];
        if self
            .input
            .read(&mut rest)
            .map_err(|e| Error::io(&self.path, e))?
            != 0
        {
            return Err(self.bad("trailing bytes after the end"));
        }
        Ok(std::array::from_fn(|i| {
            u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("eight bytes"))
        }))
    }
}

fn record_words(r: &AnchorRecord) -> [u32; RECORD_WORDS] {
    let flags = u32::from(r.has_positive)
        | u32::from(r.capped) << 1
        | u32::from(r.violating_neighbour.is_some()) << 2
        | u32::from(r.violating_neighbour == Some(true)) << 3
        | u32::from(r.neighbour_labels.is_some()) << 4;
    let n = r.neighbour_labels.unwrap_or(NeighbourLabels {
        agreement: 0.0,
        majority: 0,
    });
    [
        r.anchor,
        r.label,
        flags,
        r.triplets,
        n.agreement.to_bits(),
        n.majority,
        r.pairs,
        r.short_pairs,
        r.dropped_pairs,
        r.guard_removed[0],
        r.guard_removed[1],
        r.guard_removed[2],
        r.guard_removed[3],
        r.reuse_removed,
        r.bounds.other_lo.to_bits(),
        r.bounds.other_hi.to_bits(),
        r.bounds.other_near.to_bits(),
        r.bounds.any_hi.to_bits(),
        r.bounds.same_far.to_bits(),
        r.bounds.same_near.to_bits(),
        r.bounds.key_cut,
        r.neighbours,
    ]
}

fn record_of(w: &[u32]) -> AnchorRecord {
    let flag = |bit: u32| w[2] & (1 << bit) != 0;
    AnchorRecord {
        anchor: w[0],
        label: w[1],
        has_positive: flag(0),
        capped: flag(1),
        violating_neighbour: flag(2).then_some(flag(3)),
        neighbour_labels: flag(4).then_some(NeighbourLabels {
            agreement: f32::from_bits(w[4]),
            majority: w[5],
        }),
        triplets: w[3],
        pairs: w[6],
        short_pairs: w[7],
        dropped_pairs: w[8],
        guard_removed: [w[9], w[10], w[11], w[12]],
        reuse_removed: w[13],
        bounds: AnchorBounds {
            other_lo: f32::from_bits(w[14]),
            other_hi: f32::from_bits(w[15]),
            other_near: f32::from_bits(w[16]),
            any_hi: f32::from_bits(w[17]),
            same_far: f32::from_bits(w[18]),
            same_near: f32::from_bits(w[19]),
            key_cut: w[20],
        },
        neighbours: w[21],
    }
}

fn triplet_words(t: &Triplet) -> [u32; TRIPLET_WORDS] {
    [
        t.anchor,
        t.positive,
        t.negative,
        t.d_ap.to_bits(),
        t.d_an.to_bits(),
        t.negative_rank,
    ]
}

fn triplet_of(w: &[u32]) -> Triplet {
    Triplet {
        anchor: w[0],
        positive: w[1],
        negative: w[2],
        d_ap: f32::from_bits(w[3]),
        d_an: f32::from_bits(w[4]),
        negative_rank: w[5],
    }
}

/// Blocks held on disk until every one is mined: an unnamed file in the scratch folder (the
/// system removes it when the run ends, also on a kill).
pub(super) struct HeldBlocks {
    writer: BlockWriter,
}

impl HeldBlocks {
    pub(super) fn new(scratch: &Path) -> Result<Self> {
        let file = tempfile::tempfile_in(scratch).map_err(|e| Error::io(scratch, e))?;
        Ok(HeldBlocks {
            writer: BlockWriter::new(file, &scratch.join("<held blocks>"), 0, 0)?,
        })
    }

    pub(super) fn hold(&mut self, block: &MinedBlock) -> Result<()> {
        self.writer.block(block)
    }

    /// Ends the held blocks: they can be read back, in the order held, as often as needed.
    pub(super) fn held(self) -> Result<HeldFile> {
        let path = self.writer.dest.clone();
        let file = self.writer.end([0; FIGURES])?;
        Ok(HeldFile { file, path })
    }
}

/// Blocks held on disk, ended ([`HeldBlocks::held`]).
pub(super) struct HeldFile {
    file: File,
    path: PathBuf,
}

impl HeldFile {
    /// A reader of the held blocks from the first.
    pub(super) fn read(&self) -> Result<BlockReader> {
        use std::io::Seek;
        let mut file = self
            .file
            .try_clone()
            .map_err(|e| Error::io(&self.path, e))?;
        file.rewind().map_err(|e| Error::io(&self.path, e))?;
        BlockReader::new(file, &self.path)
    }
}

/// Shows every block `blocks` has left to the cross-anchor rules (part of a pass).
pub(super) fn observe_blocks(rules: &mut CrossAnchorRules, blocks: &mut BlockReader) -> Result<()> {
    while let Some(block) = blocks.next_block()? {
        rules.observe(&block);
    }
    Ok(())
}

/// Passes over every block until the cross-anchor rules have learnt enough (one pass,
/// unless their counts outgrow a memory budget): `pass` shows them every block once.
pub(super) fn observe_in_passes(
    rules: &mut CrossAnchorRules,
    mut pass: impl FnMut(&mut CrossAnchorRules) -> Result<()>,
) -> Result<()> {
    loop {
        pass(rules)?;
        if rules.learned() {
            return Ok(());
        }
    }
}

/// [`observe_in_passes`] over one file of blocks: `open` gives a reader of every block from
/// the first, for each pass.
pub(super) fn observe_every_block(
    rules: &mut CrossAnchorRules,
    mut open: impl FnMut() -> Result<BlockReader>,
) -> Result<()> {
    observe_in_passes(rules, |rules| observe_blocks(rules, &mut open()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(anchor: u32) -> AnchorRecord {
        AnchorRecord {
            anchor,
            label: 2,
            has_positive: true,
            triplets: 2,
            capped: true,
            violating_neighbour: Some(false),
            neighbour_labels: Some(NeighbourLabels {
                agreement: 0.25,
                majority: 9,
            }),
            pairs: 1,
            short_pairs: 1,
            dropped_pairs: 0,
            guard_removed: [1, 2, 3, 4],
            reuse_removed: 5,
            bounds: AnchorBounds {
                other_lo: 0.5,
                other_hi: f32::INFINITY,
                other_near: 0.75,
                any_hi: -1.0,
                same_far: f32::NEG_INFINITY,
                same_near: 2.5,
                key_cut: 77,
            },
            neighbours: 2,
        }
    }

    fn blocks() -> Vec<MinedBlock> {
        let t = |n: u32, d: f32| Triplet {
            anchor: 7,
            positive: 3,
            negative: n,
            d_ap: 0.5,
            d_an: d,
            negative_rank: n + 1,
        };
        let bare = AnchorRecord {
            has_positive: false,
            capped: false,
            violating_neighbour: Some(true),
            neighbour_labels: None,
            triplets: 0,
            neighbours: 0,
            ..record(8)
        };
        vec![
            MinedBlock {
                anchors: vec![record(7)],
                triplets: vec![t(10, 0.75), t(11, f32::MIN_POSITIVE)],
                neighbours: vec![(0.25, 4), (f32::MIN_POSITIVE, 9)],
            },
            MinedBlock::default(),
            MinedBlock {
                anchors: vec![bare],
                triplets: Vec::new(),
                neighbours: Vec::new(),
            },
        ]
    }

    fn assert_same(read: &[MinedBlock], written: &[MinedBlock]) {
        assert_eq!(read.len(), written.len());
        for (a, b) in read.iter().zip(written) {
            assert_eq!(a.anchors, b.anchors);
            assert_eq!(a.triplets, b.triplets);
        }
    }

    #[test]
    fn a_file_gives_back_the_blocks_and_figures_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let written = blocks();
        let mut w = BlockWriter::new(File::create(&path).unwrap(), &path, 0xdead_beef, 3).unwrap();
        for b in &written {
            w.block(b).unwrap();
        }
        w.end([1, 2, 3]).unwrap();
        let mut r = BlockReader::open(&path).unwrap();
        assert_eq!((r.id, r.number), (0xdead_beef, 3));
        let mut read = Vec::new();
        while let Some(b) = r.next_block().unwrap() {
            read.push(b);
        }
        assert_same(&read, &written);
        assert_eq!(r.figures().unwrap(), [1, 2, 3]);
    }

    #[test]
    fn a_file_cut_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut w = BlockWriter::new(File::create(&path).unwrap(), &path, 1, 0).unwrap();
        for b in &blocks() {
            w.block(b).unwrap();
        }
        w.end([0; FIGURES]).unwrap();
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 10, 24, 30, whole.len() / 2, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let read = BlockReader::open(&path).and_then(|mut r| {
                while r.next_block()?.is_some() {}
                r.figures()
            });
            let e = read.expect_err("a cut file").to_string();
            assert!(
                e.contains("truncated") || e.contains("not a file"),
                "{cut}: {e}"
            );
        }
    }

    #[test]
    fn held_blocks_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let written = blocks();
        let mut held = HeldBlocks::new(dir.path()).unwrap();
        for b in &written {
            held.hold(b).unwrap();
        }
        let held = held.held().unwrap();
        for _pass in 0..2 {
            let mut r = held.read().unwrap();
            let mut read = Vec::new();
            while let Some(b) = r.next_block().unwrap() {
                read.push(b);
            }
            assert_same(&read, &written);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "unnamed");
    }
}
