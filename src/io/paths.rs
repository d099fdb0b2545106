//! Input paths: files, folders of `.parquet` files and globs, expanded in the order given.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Expands files, folders (their `.parquet` files, by name) and globs, in the order given.
pub fn resolve_inputs(specs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for spec in specs {
        if spec.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(spec)
                .map_err(|e| Error::io(spec, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "parquet"))
                .collect();
            if found.is_empty() {
                return Err(Error::NoInput(format!(
                    "folder {} holds no .parquet file",
                    spec.display()
                )));
            }
            found.sort();
            files.extend(found);
        } else if spec.is_file() {
            files.push(spec.clone());
        } else if spec.exists() {
            return Err(Error::BadFile {
                path: spec.clone(),
                reason: "not a Parquet file: it is not a regular file (a device, a pipe or a \
                         socket)"
                    .into(),
            });
        } else {
            let pattern = spec.to_string_lossy();
            let is_glob = pattern.contains(['*', '?', '[']);
            if !is_glob {
                return Err(Error::NoInput(format!(
                    "{}: no such file or folder",
                    spec.display()
                )));
            }
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map_err(|e| Error::Config(format!("bad glob `{pattern}`: {e}")))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                return Err(Error::NoInput(format!("glob `{pattern}` matches no file")));
            }
            found.sort();
            files.extend(found);
        }
    }
    Ok(files)
}
