//! Run manifests: what a run read, how it was configured, what it wrote and found.
//!
//! In: the resolved configuration, the input files, the outputs and the [`Summary`]. Out:
//! `<out>.manifest.json` beside the outputs, and the check that lets a rerun with the same
//! inputs and configuration skip its work.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Summary;
use crate::config::{MiningOptions, OutputOptions, ResultOptions};
use crate::error::{Error, Result};
use crate::io::{is_folder_output, write_atomic};

/// An input file as it was when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStat {
    pub path: PathBuf,
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: u128,
    /// SHA-256 of the Parquet footer (row groups, offsets, statistics), which changes with
    /// the content even when a copy keeps size and modification time.
    #[serde(default)]
    pub footer_sha256: String,
}

/// An output file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStat {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The manifest of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub tripmine_version: String,
    /// SHA-256 of the version, the configuration that shapes the outputs and the inputs' stats.
    pub fingerprint: String,
    /// The resolved configuration.
    pub config: MiningOptions,
    pub inputs: Vec<InputStat>,
    pub outputs: Vec<OutputStat>,
    pub summary: Summary,
}

/// Where the manifest of an output goes: `<out>.manifest.json`, beside it.
pub fn manifest_path(out: &Path) -> PathBuf {
    let trimmed = out.as_os_str().to_string_lossy();
    PathBuf::from(format!("{}.manifest.json", trimmed.trim_end_matches('/')))
}

/// Size, modification time and footer hash of each input.
pub fn stat_inputs(files: &[PathBuf]) -> Result<Vec<InputStat>> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            let modified_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Ok(InputStat {
                path: path.clone(),
                bytes: meta.len(),
                modified_ns,
                footer_sha256: footer_hash(path, meta.len())?,
            })
        })
        .collect()
}

/// SHA-256 of a Parquet file's footer (its metadata and the closing length and magic), or of
/// the last 64 KiB of a file that does not end like Parquet.
fn footer_hash(path: &Path, bytes: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 8;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut read_last = |n: u64| -> Result<Vec<u8>> {
        let n = n.min(bytes);
        let mut buf = vec![0u8; n as usize];
        file.seek(SeekFrom::End(-(n as i64)))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(path, e))?;
        Ok(buf)
    };
    let tail = read_last(TAIL)?;
    let footer = match tail.split_at_checked(4) {
        Some((len, b"PAR1")) => {
            let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as u64;
            read_last(len + TAIL)?
        }
        _ => read_last(64 << 10)?,
    };
    Ok(sha256_hex(&footer))
}

/// SHA-256 of `bytes`, as lowercase hex.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file an output path holds (the parts and marker of a folder).
pub fn stat_outputs(paths: &[&Path]) -> Result<Vec<OutputStat>> {
    let mut out = Vec::new();
    for &path in paths {
        let mut files = if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            inside.sort();
            inside
        } else {
            vec![path.to_path_buf()]
        };
        for file in files.drain(..) {
            let bytes = std::fs::metadata(&file)
                .map_err(|e| Error::io(&file, e))?
                .len();
            out.push(OutputStat { path: file, bytes });
        }
    }
    Ok(out)
}

/// The fingerprint of a run: what its outputs depend on (not threads, progress or gates).
pub fn fingerprint(options: &MiningOptions, inputs: &[InputStat]) -> String {
    // Gates change no output: a rerun with other gates checks them against the manifest.
    let output = OutputOptions {
        fail_if: Vec::new(),
        ..options.output.clone()
    };
    let shaping = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "options": ResultOptions { output: &output, ..options.result_options() },
        "out_is_folder": is_folder_output(&options.output.out),
        "files": inputs,
    });
    sha256_hex(&serde_json::to_vec(&shaping).expect("configuration serialises"))
}

/// The manifest at `path` if it has this fingerprint and every output it lists is still there
/// with its size; `None` means the work has to be done.
pub fn up_to_date(path: &Path, fingerprint: &str) -> Option<Manifest> {
    let text = std::fs::read(path).ok()?;
    let manifest: Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            tracing::info!(manifest = %path.display(), "previous manifest unreadable ({e}): running");
            return None;
        }
    };
    if manifest.fingerprint != fingerprint {
        tracing::info!(manifest = %path.display(), "inputs or configuration changed: running");
        return None;
    }
    let changed = manifest
        .outputs
        .iter()
        .find(|o| !std::fs::metadata(&o.path).is_ok_and(|m| m.len() == o.bytes));
    if let Some(o) = changed {
        tracing::info!(output = %o.path.display(), "an output is missing or changed: running");
        return None;
    }
    Some(manifest)
}

/// Writes the manifest atomically.
pub fn write_manifest(path: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    write_atomic(path, &json)
}
