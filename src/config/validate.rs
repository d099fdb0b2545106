//! Validation: the ranges and combinations of options a job can run with, checked once when a
//! [`MiningConfig`] is made. Errors name the pipeline-file key (and so the flag).

use super::{
    Count, GUARDS, InputOptions, Metric, MiningConfig, MiningOptions, MiningParams, OutputFormat,
    is_folder_output,
};
use crate::error::{Error, Result};

impl InputOptions {
    /// `in_memory`: the rows are handed over as Arrow batches, not read from `paths`.
    fn validate(&self, in_memory: bool) -> Result<()> {
        let id = self.id_col.as_deref().unwrap_or("id");
        for name in &self.with {
            let taken = name == id || (!self.retrieval() && name == &self.label_col);
            if taken {
                return Err(invalid(
                    "input.with",
                    format!("`{name}` is already in the output (as anchor_{name} and others)"),
                ));
            }
        }
        if in_memory && (!self.paths.is_empty() || self.retrieval()) {
            return Err(invalid(
                "input.paths",
                "the rows are handed over in memory: give no input files (nor queries and corpus)",
            ));
        }
        if !self.retrieval() {
            if self.paths.is_empty() && !in_memory {
                return Err(invalid("input.paths", "names no input"));
            }
            if self.qrels.is_some() || self.positives_col.is_some() {
                return Err(invalid(
                    "input.qrels",
                    "belongs to retrieval mode: give --queries and --corpus too",
                ));
            }
            return Ok(());
        }
        if !self.paths.is_empty() {
            return Err(invalid(
                "input.paths",
                "labelled input (--in) and retrieval input (--queries, --corpus) exclude each other",
            ));
        }
        if self.queries.is_empty() || self.corpus.is_empty() {
            return Err(invalid(
                "input.queries",
                "retrieval mode needs both --queries and --corpus",
            ));
        }
        match (&self.qrels, &self.positives_col) {
            (None, None) => Err(invalid(
                "input.qrels",
                "retrieval mode needs the known positives: --qrels FILE or --positives-col COL",
            )),
            (Some(_), Some(_)) => Err(invalid(
                "input.qrels",
                "give the known positives once: --qrels or --positives-col, not both",
            )),
            _ => Ok(()),
        }
    }
}

impl MiningParams {
    /// Checks ranges; every entry point calls it before mining.
    pub fn validate(&self) -> Result<()> {
        if !self.margin.is_finite() || self.margin < 0.0 {
            return Err(invalid(
                "mine.margin",
                format!("must be a finite number >= 0, got {}", self.margin),
            ));
        }
        if self.k == Some(0) {
            return Err(invalid("mine.k", "must be at least 1"));
        }
        if let Some(max_k) = self.max_k
            && max_k < self.k()
        {
            return Err(invalid(
                "mine.max_k",
                format!("({max_k}) must be at least k ({})", self.k()),
            ));
        }
        if !(self.auto_exact_weight.is_finite() && self.auto_exact_weight > 0.0) {
            return Err(invalid(
                "mine.auto_exact_weight",
                format!(
                    "must be a finite number > 0, got {}",
                    self.auto_exact_weight
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.target_recall) {
            return Err(invalid(
                "mine.target_recall",
                format!("must lie in [0, 1], got {}", self.target_recall),
            ));
        }
        if self.anchors_sample == Some(0) {
            return Err(invalid("mine.anchors_sample", "must be at least 1"));
        }
        for (key, v) in [
            ("mine.train_sample", Some(self.train_sample)),
            ("mine.nprobe", self.nprobe),
            ("mine.ef_search", self.ef_search),
        ] {
            if v == Some(0) {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.suspects_k < 1 {
            return Err(invalid("mine.suspects_k", "must be at least 1"));
        }
        if self.index.trim().is_empty() {
            return Err(invalid("mine.index", "is empty"));
        }
        for guard in GUARDS {
            let Some(v) = guard.setting(self) else {
                continue;
            };
            if self.metric != Metric::Cosine {
                return Err(invalid(
                    guard.key(),
                    "is a cosine-similarity guard: it needs metric cosine (--metric cosine)",
                ));
            }
            if let Err(range) = guard.admits(v) {
                return Err(invalid(guard.key(), format!("must be {range}, got {v}")));
            }
        }
        if let Some(max) = self.range_max
            && max <= self.range_min
        {
            return Err(invalid(
                "mine.range_max",
                format!(
                    "({max}) must be greater than range_min ({})",
                    self.range_min
                ),
            ));
        }
        if self.max_negative_reuse == Some(0) {
            return Err(invalid("mine.max_negative_reuse", "must be at least 1"));
        }
        Ok(())
    }
}

impl MiningConfig {
    /// Validates the options once.
    pub fn new(options: MiningOptions) -> Result<Self> {
        Self::validated(options, false)
    }

    /// Validates options for a job whose labelled rows the host hands over as Arrow batches
    /// ([`crate::pipeline::run_batches`]): as [`MiningConfig::new`], but `input.paths` (and
    /// retrieval inputs) must be empty.
    pub fn for_batches(options: MiningOptions) -> Result<Self> {
        Self::validated(options, true)
    }

    /// [`MiningConfig::for_batches`] when `in_memory`, else [`MiningConfig::new`].
    pub fn validated(options: MiningOptions, in_memory: bool) -> Result<Self> {
        options.input.validate(in_memory)?;
        options.mine.validate()?;
        if options.output.format == OutputFormat::NTuple && options.mine.num_negatives == Count::All
        {
            return Err(invalid(
                "output.format",
                "n-tuple rows have a fixed number of negative columns: set num_negatives to a number",
            ));
        }
        if options.input.retrieval() && options.report.suspects.is_some() {
            return Err(invalid(
                "report.suspects",
                "label-noise suspects need labels: not available in retrieval mode",
            ));
        }
        if options.run.state.is_some() {
            incremental_applies(&options, in_memory)?;
        } else if options.output.delta.is_some() {
            return Err(invalid(
                "output.delta",
                "a delta is what changed since the last run with the same run.state: set run.state",
            ));
        }
        if options.run.threads == Some(0) {
            return Err(invalid("run.threads", "must be at least 1"));
        }
        if options.output.max_rows_per_file == 0 {
            return Err(invalid("output.max_rows_per_file", "must be at least 1"));
        }
        let out = &options.output;
        let others = [
            Some(&out.report),
            out.summary_json.as_ref(),
            options.report.html.as_ref(),
            options.report.suspects.as_ref(),
            out.delta.as_ref(),
        ];
        if is_folder_output(&out.out) && others.iter().flatten().any(|p| p.starts_with(&out.out)) {
            return Err(invalid(
                "output.out",
                "is a folder that holds another output; it is replaced whole on every run",
            ));
        }
        let named = options.outputs();
        for (i, (key, path)) in named.iter().enumerate() {
            if let Some((first, _)) = named[..i].iter().find(|(_, p)| p == path) {
                return Err(invalid(
                    key,
                    format!(
                        "names {}, which {} names too: each output needs its own path",
                        path.display(),
                        crate::error::flag_of(first)
                    ),
                ));
            }
        }
        Ok(MiningConfig(options))
    }
}

/// Incremental mining (`run.state`) compares input files (labelled tables, or a corpus that
/// grows under fixed queries), and what it keeps bounds what new rows can change only where
/// each anchor's search went as deep as its selection needed.
fn incremental_applies(options: &MiningOptions, in_memory: bool) -> Result<()> {
    let unsupported = if in_memory {
        Some("rows handed over in memory (it compares input files)")
    } else if options.mine.max_k.is_some() {
        Some("max_k (a capped search gives no bounds of what it missed)")
    } else {
        None
    };
    match unsupported {
        Some(what) => Err(invalid(
            "run.state",
            format!("incremental mining works on input files; not with {what}"),
        )),
        None => Ok(()),
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        message: message.into(),
    }
}
