//! Pipeline files: a TOML file per scheduled job, with the shape of [`MiningOptions`]
//! (`[input]`, `[mine]`, `[output]`, `[run]`; every `mine` flag has a key of the same name).
//!
//! In: the file's path and `--set section.key=value` overrides. Out: a validated
//! [`MiningConfig`], or an error naming the file, the key and its line. Relative paths in the
//! file are relative to the working directory, as on the command line.

use std::path::Path;

use serde::Deserialize;

use crate::config::{MiningConfig, MiningOptions};
use crate::error::{Error, Result};

/// Reads, overrides and validates a pipeline file.
pub fn load(path: &Path, overrides: &[String]) -> Result<MiningConfig> {
    let fail = |message: String| Error::Pipeline {
        file: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // Parsed once as it stands, so unknown keys and bad values are reported at their line.
    let mut options: MiningOptions = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let mut overridden = Vec::new();
    if !overrides.is_empty() {
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| fail(e.to_string()))?;
        for o in overrides {
            let (key, value) = parse_override(o).map_err(&fail)?;
            set(&mut doc, &key, value).map_err(|m| fail(format!("--set {o}: {m}")))?;
            options = MiningOptions::deserialize(toml::Value::Table(doc.clone()))
                .map_err(|e| fail(format!("--set {o}: {}", e.message())))?;
            overridden.push(key.join("."));
        }
    }
    MiningConfig::new(options).map_err(|e| match e {
        Error::Invalid { key, message } => {
            let flag = crate::error::flag_of(key);
            if overridden.iter().any(|k| k == key) {
                fail(format!("--set {key}: {key} ({flag}) {message}"))
            } else if let Some(line) = line_of(&text, key) {
                fail(format!("line {line}: {key} ({flag}) {message}"))
            } else {
                fail(format!("{key} ({flag}) {message}"))
            }
        }
        other => other,
    })
}

/// `section.key=value`; the value is read as TOML (`0.3`, `"text"`, `[1, 2]`), else as text.
fn parse_override(o: &str) -> Result<(Vec<String>, toml::Value), String> {
    let (key, raw) = o
        .split_once('=')
        .ok_or_else(|| format!("--set {o}: expected section.key=value"))?;
    let key: Vec<String> = key
        .trim()
        .split('.')
        .map(|k| k.trim().to_string())
        .collect();
    if key.iter().any(|k| k.is_empty()) {
        return Err(format!("--set {o}: empty key"));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((key, value))
}

fn set(doc: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = key.split_last().expect("non-empty key");
    let mut table = doc;
    for s in sections {
        let entry = table
            .entry(s.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{s}` is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// The line (1-based) where `section.key` is set in the file's text, from the TOML parser's
/// spans.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    fn entry<'t, 'i>(
        table: &'t toml::de::DeTable<'i>,
        name: &str,
    ) -> Option<(std::ops::Range<usize>, &'t toml::de::DeValue<'i>)> {
        table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == name)
            .map(|(k, v)| (k.span(), v.get_ref()))
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let parts: Vec<&str> = dotted.split('.').collect();
    let (last, sections) = parts.split_last()?;
    let mut table = doc.get_ref();
    for s in sections {
        table = entry(table, s)?.1.as_table()?;
    }
    let (span, _) = entry(table, last)?;
    Some(text[..span.start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_their_section() {
        let text = "[input]\npaths = [\"a\"]\n\n[mine]\nk = 3\nmargin = -1\n";
        assert_eq!(line_of(text, "mine.margin"), Some(6));
        assert_eq!(line_of(text, "mine.k"), Some(5));
        assert_eq!(line_of(text, "input.k"), None);
        let dotted = "# [mine]\nmine.k = 3\n\"mine\".margin = -1\n";
        assert_eq!(line_of(dotted, "mine.margin"), Some(3));
        let inline = "mine = { k = 3,\n  margin = -1 }\n";
        assert_eq!(line_of(inline, "mine.margin"), Some(2));
    }

    #[test]
    fn override_values_are_toml_or_text() {
        let (key, v) = parse_override("mine.margin=0.3").unwrap();
        assert_eq!(key, ["mine", "margin"]);
        assert_eq!(v, toml::Value::Float(0.3));
        let (_, v) = parse_override("mine.index=IVF64,Flat").unwrap();
        assert_eq!(v, toml::Value::String("IVF64,Flat".into()));
        assert!(parse_override("mine.margin").is_err());
    }
}
