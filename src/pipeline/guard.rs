//! Outputs that would destroy inputs: refused before anything is read or written.
//!
//! In: the resolved input files and the configured outputs. Out: `Ok`, or a configuration
//! error naming the output and the input it would replace. Paths are compared as files, not
//! as text: canonical paths (so `./a` and symbolic links count) and (device, inode) (so hard
//! links count), and an output folder, replaced whole on every run, may hold no input.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::MiningOptions;
use crate::error::{Error, Result, flag_of};
use crate::io::is_folder_output;

/// What a path is on disk: its canonical form and, when it exists, its (device, inode).
struct FileId {
    canonical: PathBuf,
    inode: Option<(u64, u64)>,
}

impl FileId {
    fn of(path: &Path) -> FileId {
        match std::fs::metadata(path) {
            Ok(meta) => FileId {
                canonical: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
                inode: Some((meta.dev(), meta.ino())),
            },
            // Not there yet: its folder's canonical path and its name.
            Err(_) => {
                let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let canonical = std::fs::canonicalize(parent)
                    .map(|p| p.join(&name))
                    .unwrap_or_else(|_| path.to_path_buf());
                FileId {
                    canonical,
                    inode: None,
                }
            }
        }
    }

    fn same_file(&self, other: &FileId) -> bool {
        match (self.inode, other.inode) {
            (Some(a), Some(b)) => a == b,
            _ => self.canonical == other.canonical,
        }
    }
}

/// Refuses outputs that name an input (or, for a folder output, hold one), or each other.
pub fn refuse_outputs_over_inputs(options: &MiningOptions, inputs: &[PathBuf]) -> Result<()> {
    let inputs: Vec<(&Path, FileId)> = inputs
        .iter()
        .chain(options.input.load_index.as_ref())
        .map(|p| (p.as_path(), FileId::of(p)))
        .collect();
    let outputs: Vec<(&str, &Path, FileId)> = options
        .outputs()
        .into_iter()
        .map(|(key, p)| (key, p, FileId::of(p)))
        .collect();
    for (i, (key, out, out_id)) in outputs.iter().enumerate() {
        let folder = *key == "output.out" && is_folder_output(out);
        for (input, in_id) in &inputs {
            let inside = folder && in_id.canonical.starts_with(&out_id.canonical);
            if out_id.same_file(in_id) || inside {
                let symlink = std::fs::symlink_metadata(out).is_ok_and(|m| m.is_symlink());
                let how = if inside && !out_id.same_file(in_id) {
                    "holds the input"
                } else if symlink {
                    "is, through a symbolic link, the input"
                } else if out_id.canonical != in_id.canonical {
                    "is, through a hard link, the input"
                } else {
                    "is the input"
                };
                return Err(Error::Config(format!(
                    "the output {} {} {how} {}: writing it would destroy the data being \
                     mined; choose another output path",
                    flag_of(key),
                    out.display(),
                    input.display()
                )));
            }
        }
        if let Some((first, first_path, _)) =
            outputs[..i].iter().find(|(_, _, id)| id.same_file(out_id))
        {
            return Err(Error::Config(format!(
                "the outputs {} {} and {} {} are the same file: each output needs its own path",
                flag_of(first),
                first_path.display(),
                flag_of(key),
                out.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, out: &str) -> MiningOptions {
        let mut o = MiningOptions::default();
        o.input.paths = vec![dir.join("in.parquet")];
        o.output.out = dir.join(out);
        o.output.report = dir.join("report.parquet");
        o
    }

    #[test]
    fn an_output_through_a_symlink_to_an_input_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let input = dir.path().join("in.parquet");
        std::fs::write(&input, b"data").unwrap();
        std::os::unix::fs::symlink(&input, dir.path().join("link.parquet")).unwrap();
        let e =
            refuse_outputs_over_inputs(&options(dir.path(), "link.parquet"), &[input]).unwrap_err();
        assert!(e.to_string().contains("through a symbolic link"), "{e}");
    }

    #[test]
    fn an_output_hard_linked_to_an_input_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let input = dir.path().join("in.parquet");
        std::fs::write(&input, b"data").unwrap();
        std::fs::hard_link(&input, dir.path().join("hard.parquet")).unwrap();
        let e =
            refuse_outputs_over_inputs(&options(dir.path(), "hard.parquet"), &[input]).unwrap_err();
        assert!(e.to_string().contains("through a hard link"), "{e}");
    }

    #[test]
    fn a_folder_output_holding_an_input_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let input = dir.path().join("in.parquet");
        std::fs::write(&input, b"data").unwrap();
        let e = refuse_outputs_over_inputs(&options(dir.path(), "./"), &[input]).unwrap_err();
        assert!(e.to_string().contains("holds the input"), "{e}");
    }

    #[test]
    fn distinct_new_outputs_pass() {
        let dir = tempfile::TempDir::new().unwrap();
        let input = dir.path().join("in.parquet");
        std::fs::write(&input, b"data").unwrap();
        refuse_outputs_over_inputs(&options(dir.path(), "out.parquet"), &[input]).unwrap();
    }
}
