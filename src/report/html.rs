//! The HTML report: one self-contained page (inline SVG charts, inline CSS, no scripts, nothing
//! fetched) that an ML engineer opens first after a run.
//!
//! In: the report batch (per-label rows and the overall row), the totals, the histogram of
//! `d_an - d_ap`, the configuration and the collapse warnings. Out: the page as a string.
//! Every number shown carries its exact value in a `data-value` attribute, so tests (and
//! scripts) can compare it with the Parquet report.

use std::fmt::Write;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, UInt64Type};
use arrow::util::display::array_value_to_string;
use plotters::prelude::*;

use super::{Histogram, Totals, thousands};
use crate::config::{MiningOptions, cli_name};

/// What the page shows.
pub struct Page<'a> {
    pub batch: &'a RecordBatch,
    pub totals: &'a Totals,
    pub histogram: &'a Histogram,
    pub options: &'a MiningOptions,
    /// Every warning of the run (the summary's).
    pub warnings: &'a [String],
    pub facts: RunFacts<'a>,
}

/// The run's facts for the page's header.
pub struct RunFacts<'a> {
    /// Rows indexed (the table, or the corpus).
    pub rows: u64,
    pub dim: usize,
    /// Distinct labels (labelled mode).
    pub labels: usize,
    /// Retrieval mode: the queries.
    pub queries: Option<u64>,
    /// The index used (`auto` resolved).
    pub index: &'a str,
    pub exact: bool,
    /// How the index's search was chosen and tuned (`auto`'s choice, the recall tuning).
    pub search: Option<String>,
    /// When the run started.
    pub started: std::time::SystemTime,
}

const HARD: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const SEMIHARD: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const EASY: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
/// Labels shown in the per-label table and chart, worst first.
const WORST_LABELS: usize = 30;
/// Chart text, in plotters' points (0.8 pixel each in its SVG): about 16 px, the body text.
const FONT: u32 = 20;
/// Kinds whose counts differ by more than this factor get a panel each, so the smaller ones
/// are not slivers on a shared axis.
const PANEL_RATIO: u64 = 20;

/// Renders the page.
pub fn render(page: &Page) -> String {
    let t = page.totals;
    let o = page.options;
    let margin = o.mine.margin;
    let f = &page.facts;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tripmine report</title><style>{CSS}</style></head><body>\n\
         <h1>tripmine report</h1>\n<p class=\"sub\" id=\"run-date\">{} UTC &middot; tripmine {}</p>\n",
        humantime::format_rfc3339_seconds(f.started)
            .to_string()
            .trim_end_matches('Z')
            .replace('T', " "),
        env!("CARGO_PKG_VERSION"),
    );
    let data = match f.queries {
        Some(q) => format!(
            "{} queries against {} documents &times; {} dimensions",
            thousands(q),
            thousands(f.rows),
            f.dim
        ),
        None => format!(
            "{} rows &times; {} dimensions, {} labels",
            thousands(f.rows),
            f.dim,
            thousands(f.labels as u64)
        ),
    };
    let m = &o.mine;
    let strategy = format!(
        "positives {} &times; {}, negatives {} &times; {} ({})",
        cli_name(m.positives),
        m.num_positives,
        cli_name(m.negatives),
        m.num_negatives,
        cli_name(m.sample)
    );
    h.push_str("<table class=\"figures\" id=\"run\">");
    for (what, value) in [
        ("data", data),
        (
            "inputs",
            esc(&o
                .input
                .all_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")),
        ),
        ("strategy", strategy),
        (
            "distance",
            format!("{}, margin {margin}", cli_name(m.metric)),
        ),
        (
            "index",
            format!(
                "{} ({}){}",
                esc(f.index),
                if f.exact { "exact" } else { "approximate" },
                f.search
                    .as_ref()
                    .map_or(String::new(), |s| format!("<br>{}", esc(s)))
            ),
        ),
    ] {
        let _ = write!(h, "<tr><th>{what}</th><td>{value}</td></tr>");
    }
    h.push_str("</table>\n");

    let collapse = t.collapse_warnings(margin);
    let others: Vec<&String> = page
        .warnings
        .iter()
        .filter(|w| !collapse.contains(w))
        .collect();
    if !others.is_empty() {
        h.push_str("<div class=\"warn\" id=\"warnings\"><b>Warnings</b><ul>");
        for w in others {
            let _ = write!(h, "<li>{}</li>", esc(w));
        }
        h.push_str("</ul></div>\n");
    }
    if !collapse.is_empty() {
        h.push_str(
            "<div class=\"warn\" id=\"collapse-warnings\"><b>Embeddings look collapsed</b><ul>",
        );
        for w in &collapse {
            let _ = write!(h, "<li>{}</li>", esc(w));
        }
        h.push_str("</ul></div>\n");
    }

    h.push_str("<h2>Overview</h2>\n<table class=\"figures\" id=\"overview\">");
    for (name, what) in [
        ("anchors", "anchors mined"),
        ("triplets", "triplets"),
        ("hard", "hard (d_an &le; d_ap)"),
        ("semihard", "semi-hard (0 &lt; d_an - d_ap &le; margin)"),
        ("easy", "easy (d_an - d_ap &gt; margin)"),
        ("active_fraction", "active fraction (loss &gt; 0)"),
        (
            "neighbour_violation_share",
            "data-set health: anchors whose nearest other-label row is within d(a, hardest positive) + margin",
        ),
        (
            "margin_pileup_share",
            "triplets with |d_an - d_ap| &le; margin/100",
        ),
        (
            "embedding_spread",
            "embedding spread (total variance / mean squared norm)",
        ),
    ] {
        figure_row(&mut h, name, what, t.figure(name).flatten());
    }
    if t.recall_anchors.is_some() {
        let sampled = format!(
            "on {} anchors mined exactly as well",
            thousands(t.recall_anchors.unwrap_or(0))
        );
        for (name, what) in [
            ("recall_negatives", "recall of mined negatives"),
            ("recall_negatives_lo", "&nbsp;&nbsp;95% interval, low"),
            ("recall_negatives_hi", "&nbsp;&nbsp;95% interval, high"),
            ("recall_candidates", "recall of candidates"),
            ("recall_candidates_lo", "&nbsp;&nbsp;95% interval, low"),
            ("recall_candidates_hi", "&nbsp;&nbsp;95% interval, high"),
            ("recall_target", "recall target"),
        ] {
            if let Some(v) = t.figure(name).flatten() {
                let what = if name == "recall_negatives" {
                    format!("{what} ({sampled})")
                } else {
                    what.to_string()
                };
                figure_row(&mut h, name, &what, Some(v));
            }
        }
    }
    h.push_str("</table>\n");

    h.push_str(
        "<h2>Distribution of d_an &minus; d_ap</h2>\n<div class=\"chart\" id=\"t-histogram\">",
    );
    let (svg, panels) = histogram_svg(page.histogram, margin);
    h.push_str(&svg);
    let _ = write!(
        h,
        "</div>\n<p class=\"legend\"><span style=\"color:#d62728\">&#9632; hard</span> \
         <span style=\"color:#ff7f0e\">&#9632; semi-hard</span> \
         <span style=\"color:#2ca02c\">&#9632; easy</span> &middot; dashed lines at 0 and at the \
         margin{}</p>\n",
        if panels {
            " &middot; one panel per kind, each with its own count axis (their counts differ by \
             orders of magnitude)"
        } else {
            ""
        }
    );

    h.push_str("<h2>Loss</h2>\n<table class=\"figures\" id=\"loss-percentiles\">");
    for (name, what) in [
        ("loss_mean", "mean"),
        ("loss_p50", "p50"),
        ("loss_p90", "p90"),
        ("loss_p99", "p99"),
        ("loss_max", "max"),
        ("d_ap_mean", "mean d_ap"),
        ("d_an_mean", "mean d_an"),
    ] {
        figure_row(&mut h, name, what, t.figure(name).flatten());
    }
    h.push_str("</table>\n");

    h.push_str("<h2>Anchors left out</h2>\n<table class=\"figures\" id=\"filters\">");
    for (name, what) in [
        (
            "anchors_without_positive",
            "no positive (alone in its label)",
        ),
        (
            "anchors_without_negative",
            "no qualifying negative for the strategy",
        ),
        ("anchors_capped", "search stopped by max-k"),
        (
            "label_noise_suspects",
            "label-noise suspects: most nearest neighbours carry one other label",
        ),
    ] {
        figure_row(&mut h, name, what, t.figure(name).flatten());
    }
    h.push_str("</table>\n");

    h.push_str(
        "<h2>Selection rules</h2>\n<p class=\"sub\">Candidates each false-negative guard took \
         away, triplets the reuse cap removed, and pairs short of negatives.</p>\n\
         <table class=\"figures\" id=\"rules\">",
    );
    for (name, what) in [
        ("pairs", "(anchor, positive) pairs"),
        ("short_pairs", "pairs with fewer negatives than asked"),
        ("dropped_pairs", "short pairs dropped (shortfall = drop)"),
        (
            "removed_max_negative_similarity",
            "removed: similarity to the anchor above the ceiling",
        ),
        (
            "removed_positive_margin",
            "removed: within the margin of the positive's similarity",
        ),
        (
            "removed_positive_percent",
            "removed: above the percentage of the positive's similarity",
        ),
        (
            "removed_near_duplicate",
            "removed: near-duplicate of the positive",
        ),
        (
            "removed_negative_reuse",
            "triplets removed by the negative reuse cap",
        ),
    ] {
        figure_row(&mut h, name, what, t.figure(name).flatten());
    }
    h.push_str("</table>\n");

    let (worst, by) = worst_labels(page.batch);
    let _ = write!(
        h,
        "<h2>Labels, worst first</h2>\n<p class=\"sub\" id=\"label-ranking\">Ranked by {}; {} of {} \
         labels shown.</p>\n<div class=\"chart\" id=\"label-chart\">{}</div>\n",
        by.describe(),
        worst.len(),
        thousands(page.batch.num_rows().saturating_sub(1) as u64),
        labels_svg(&worst, by)
    );
    h.push_str(
        "<table id=\"labels\"><tr><th>label</th><th>neighbour violation share</th>\
         <th>mean loss</th><th>active fraction</th><th>anchors</th><th>triplets</th>\
         <th>anchors without a negative</th></tr>",
    );
    for l in &worst {
        let _ = write!(
            h,
            "<tr data-label=\"{0}\"><td>{0}</td>{1}{2}{3}{4}{5}{6}</tr>",
            esc(&l.label),
            value_cell(l.violation),
            value_cell(l.loss_mean),
            value_cell(l.active),
            count_cell(l.anchors),
            count_cell(l.triplets),
            count_cell(l.without_negative),
        );
    }
    h.push_str("</table>\n");

    let _ = write!(
        h,
        "<h2>Configuration</h2>\n<p class=\"sub\">The settings that apply to this run.</p>\n\
         <pre id=\"config\">{}</pre>\n</body></html>\n",
        esc(&applicable_config(o))
    );
    h
}

/// The configuration as TOML, without the keys that do not apply to this run: retrieval
/// inputs in a labelled run (and labels in a retrieval run), and empty lists.
fn applicable_config(options: &MiningOptions) -> String {
    let Ok(toml::Value::Table(mut doc)) = toml::Value::try_from(options.result_options()) else {
        return String::new();
    };
    let not_applicable: &[&str] = if options.input.retrieval() {
        &["label_col", "paths", "allow_duplicate_ids"]
    } else {
        &[
            "queries",
            "corpus",
            "qrels",
            "positives_col",
            "qrels_query_col",
            "qrels_doc_col",
        ]
    };
    if let Some(toml::Value::Table(input)) = doc.get_mut("input") {
        for key in not_applicable {
            input.remove(*key);
        }
    }
    if !options.input.retrieval()
        && let Some(toml::Value::Table(mine)) = doc.get_mut("mine")
    {
        // The rank window's defaults (all ranks) say nothing in a labelled run.
        if options.mine.range_min == 0 && options.mine.range_max.is_none() {
            mine.remove("range_min");
        }
    }
    for (_, section) in doc.iter_mut() {
        if let toml::Value::Table(t) = section {
            t.retain(|_, v| !matches!(v, toml::Value::Array(a) if a.is_empty()));
        }
    }
    doc.retain(|_, v| !matches!(v, toml::Value::Table(t) if t.is_empty()));
    toml::to_string_pretty(&doc).unwrap_or_default()
}

fn figure_row(h: &mut String, name: &str, what: &str, value: Option<f64>) {
    let cell = match value {
        Some(v) if is_count(name) => count_cell(v as u64),
        _ => value_cell(value),
    };
    let _ = write!(h, "<tr data-figure=\"{name}\"><th>{what}</th>{cell}</tr>");
}

/// Whether a report figure is a count (shown as a whole number with separators).
fn is_count(name: &str) -> bool {
    super::COUNT_COLUMNS.contains(&name) || super::RULE_COLUMNS.contains(&name)
}

fn count_cell(n: u64) -> String {
    format!("<td data-value=\"{n}\">{}</td>", thousands(n))
}

fn value_cell(value: Option<f64>) -> String {
    match value {
        Some(v) => format!("<td data-value=\"{v:?}\">{}</td>", shown_value(v)),
        None => "<td data-value=\"\">&ndash;</td>".into(),
    }
}

/// Figures (shares, losses, distances) alike: four decimals, or three significant digits in
/// scientific notation where four decimals would hide the value.
fn shown_value(v: f64) -> String {
    if v == 0.0 || (1e-4..1e6).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct LabelRow {
    label: String,
    anchors: u64,
    triplets: u64,
    without_negative: u64,
    violation: Option<f64>,
    active: Option<f64>,
    loss_mean: Option<f64>,
}

/// The figure labels are ranked by: the first of these that varies across labels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ranking {
    NeighbourViolation,
    LossMean,
    WithoutNegative,
    TripletsPerAnchor,
}

impl Ranking {
    const ALL: [Ranking; 4] = [
        Ranking::NeighbourViolation,
        Ranking::LossMean,
        Ranking::WithoutNegative,
        Ranking::TripletsPerAnchor,
    ];

    /// The label's figure; larger is worse.
    fn badness(self, r: &LabelRow) -> Option<f64> {
        let per_anchor = |n: u64| (r.anchors > 0).then(|| n as f64 / r.anchors as f64);
        match self {
            Ranking::NeighbourViolation => r.violation,
            Ranking::LossMean => r.loss_mean,
            Ranking::WithoutNegative => per_anchor(r.without_negative),
            // Fewer triplets per anchor is worse.
            Ranking::TripletsPerAnchor => per_anchor(r.triplets).map(|x| -x),
        }
    }

    /// The figure as shown on the bars.
    fn shown(self, r: &LabelRow) -> Option<f64> {
        self.badness(r).map(|x| {
            if self == Ranking::TripletsPerAnchor {
                -x
            } else {
                x
            }
        })
    }

    /// How the labels were ranked, up to the figure the bars show.
    fn describe(self) -> String {
        let names: Vec<&str> = Ranking::ALL
            .iter()
            .take_while(|&&r| r != self)
            .chain(std::iter::once(&self))
            .map(|r| r.axis())
            .collect();
        match names.as_slice() {
            [one] => one.to_string(),
            [tied @ .., last] => format!(
                "{}, then (tied on {}) {last}, which the bars show",
                tied[0],
                if tied.len() == 1 { "it" } else { "those" }
            ),
            [] => unreachable!("the list ends with self"),
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Ranking::NeighbourViolation => {
                "the share of anchors whose nearest other-label row violates the margin"
            }
            Ranking::LossMean => "the mean loss",
            Ranking::WithoutNegative => "the share of anchors without a qualifying negative",
            Ranking::TripletsPerAnchor => "triplets per anchor (fewest first)",
        }
    }
}

/// Per-label rows (the overall row left out), worst first by the first figure that varies.
fn worst_labels(batch: &RecordBatch) -> (Vec<LabelRow>, Ranking) {
    let f64_col = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_primitive::<Float64Type>().clone())
    };
    let u64_col = |name: &str| {
        batch
            .column_by_name(name)
            .map(|c| c.as_primitive::<UInt64Type>().clone())
    };
    let (Some(violation), Some(active), Some(loss), Some(anchors), Some(triplets), Some(without)) = (
        f64_col("neighbour_violation_share"),
        f64_col("active_fraction"),
        f64_col("loss_mean"),
        u64_col("anchors"),
        u64_col("triplets"),
        u64_col("anchors_without_negative"),
    ) else {
        return (Vec::new(), Ranking::NeighbourViolation);
    };
    let opt = |a: &arrow::array::Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let labels = batch.column(0);
    let mut rows: Vec<LabelRow> = (0..batch.num_rows().saturating_sub(1))
        .map(|i| LabelRow {
            label: array_value_to_string(labels, i).unwrap_or_default(),
            anchors: anchors.value(i),
            triplets: triplets.value(i),
            without_negative: without.value(i),
            violation: opt(&violation, i),
            active: opt(&active, i),
            loss_mean: opt(&loss, i),
        })
        .collect();
    // Worst first by each figure in turn, so ties on one are broken by the next; labels
    // without a figure last; the report's label order among equals.
    rows.sort_by(|a, b| {
        Ranking::ALL
            .iter()
            .map(|by| {
                let key = |r: &LabelRow| by.badness(r).unwrap_or(f64::NEG_INFINITY);
                key(b).total_cmp(&key(a))
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rows.truncate(WORST_LABELS);
    // The bars show the first figure that tells the shown labels apart.
    let varies = |by: Ranking| {
        let mut values = rows.iter().filter_map(|r| by.badness(r));
        values
            .next()
            .is_some_and(|first| values.any(|v| (v - first).abs() > 1e-12))
    };
    let by = Ranking::ALL
        .into_iter()
        .find(|&b| varies(b))
        .unwrap_or(Ranking::NeighbourViolation);
    (rows, by)
}

/// A count axis label: a whole number with separators.
fn count_label(v: &u64) -> String {
    thousands(*v)
}

/// Histogram of `t` by kind, with the band edges at 0 and the margin (dashed). Kinds whose
/// counts differ by orders of magnitude get a panel each; otherwise bars are stacked. Returns
/// the SVG and whether it has panels.
fn histogram_svg(hist: &Histogram, margin: f32) -> (String, bool) {
    let mut svg = String::new();
    if hist.edges.len() < 2 {
        return ("<p>No triplets.</p>".into(), false);
    }
    let kinds: Vec<(&str, &[u64], RGBColor)> = [
        ("hard", hist.hard.as_slice(), HARD),
        ("semi-hard", hist.semihard.as_slice(), SEMIHARD),
        ("easy", hist.easy.as_slice(), EASY),
    ]
    .into_iter()
    .filter(|(_, c, _)| c.iter().sum::<u64>() > 0)
    .collect();
    let totals: Vec<u64> = kinds.iter().map(|(_, c, _)| c.iter().sum()).collect();
    let (most, least) = (
        totals.iter().max().copied().unwrap_or(0),
        totals.iter().min().copied().unwrap_or(0),
    );
    let panels = kinds.len() > 1 && most > PANEL_RATIO * least;
    let (lo, hi) = x_range(hist, margin);
    {
        let height = if panels {
            200 * kinds.len() as u32
        } else {
            340
        };
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let areas = if panels {
            root.split_evenly((kinds.len(), 1))
        } else {
            vec![root.clone()]
        };
        for (p, area) in areas.iter().enumerate() {
            let shown: Vec<(&str, &[u64], RGBColor)> = if panels {
                vec![kinds[p]]
            } else {
                kinds.clone()
            };
            let top = (0..hist.hard.len())
                .map(|i| shown.iter().map(|(_, c, _)| c[i]).sum::<u64>())
                .max()
                .unwrap_or(1)
                .max(1);
            let top = top + top / 20 + 1;
            let mut builder = ChartBuilder::on(area);
            builder
                .margin(10)
                .x_label_area_size(44)
                .y_label_area_size(72);
            if panels {
                builder.caption(shown[0].0, ("sans-serif", FONT).into_font());
            }
            let Ok(mut chart) = builder.build_cartesian_2d(lo..hi, 0u64..top) else {
                return (String::new(), panels);
            };
            let _ = chart
                .configure_mesh()
                .x_desc("d_an - d_ap")
                .y_desc("triplets")
                .y_label_formatter(&count_label)
                .y_labels(if panels { 5 } else { 10 })
                .label_style(("sans-serif", FONT).into_font())
                .axis_desc_style(("sans-serif", FONT).into_font())
                .light_line_style(WHITE)
                .draw();
            for i in 0..hist.hard.len() {
                let (x0, x1) = (hist.edges[i], hist.edges[i + 1]);
                let mut base = 0u64;
                for (_, counts, color) in &shown {
                    let count = counts[i];
                    if count > 0 {
                        let _ = chart.draw_series(std::iter::once(Rectangle::new(
                            [(x0, base), (x1, base + count)],
                            color.filled(),
                        )));
                        base += count;
                    }
                }
            }
            for x in [0.0, margin as f64] {
                let _ = chart.draw_series(DashedLineSeries::new(
                    [(x, 0), (x, top)],
                    6,
                    4,
                    BLACK.stroke_width(1),
                ));
            }
        }
        let _ = root.present();
    }
    (svg, panels)
}

/// The histogram's x axis: the bins, 0 and the margin, padded so that the dashed band edges
/// show inside the frame rather than on it (a semi-hard run spans exactly [0, margin]).
fn x_range(hist: &Histogram, margin: f32) -> (f64, f64) {
    let lo = hist.edges[0].min(0.0);
    let hi = hist.edges[hist.edges.len() - 1].max(margin as f64);
    let pad = 0.04 * (hi - lo).max(1e-9);
    (lo - pad, hi + pad)
}

/// Horizontal bars of the ranking figure of the worst labels.
fn labels_svg(rows: &[LabelRow], by: Ranking) -> String {
    let shown: Vec<&LabelRow> = rows.iter().take(20).collect();
    if shown.is_empty() {
        return String::new();
    }
    let values: Vec<f64> = shown.iter().map(|r| by.shown(r).unwrap_or(0.0)).collect();
    let top = match by {
        Ranking::NeighbourViolation | Ranking::WithoutNegative => 1.0,
        _ => values.iter().copied().fold(0.0, f64::max).max(1e-12) * 1.05,
    };
    let mut svg = String::new();
    {
        let height = 56 + 28 * shown.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = shown.len();
        let Ok(mut chart) = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..top, 0.0..n as f64)
        else {
            return String::new();
        };
        let _ = chart
            .configure_mesh()
            .y_labels(0)
            .x_desc(by.axis())
            .label_style(("sans-serif", FONT).into_font())
            .axis_desc_style(("sans-serif", FONT).into_font())
            .light_line_style(WHITE)
            .draw();
        // Worst at the top; each bar carries its label and value.
        let y_of = |i: usize| (n - 1 - i) as f64;
        let _ = chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
            Rectangle::new(
                [(0.0, y_of(i) + 0.15), (v, y_of(i) + 0.85)],
                HARD.mix(0.35).filled(),
            )
        }));
        let _ = chart.draw_series(shown.iter().enumerate().map(|(i, r)| {
            let text = format!(
                "{}  ({})",
                r.label,
                by.shown(r).map_or("-".into(), shown_value)
            );
            Text::new(
                text,
                (top * 0.01, y_of(i) + 0.72),
                ("sans-serif", FONT).into_font(),
            )
        }));
        let _ = root.present();
    }
    svg
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}\
h1{margin-bottom:0}.sub{color:#666}table{border-collapse:collapse;margin:.5em 0}\
th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}td{font-variant-numeric:tabular-nums}\
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.5em 1em;margin:1em 0}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto}.legend{font-size:90%}";

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, UInt64Array};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn the_band_edges_sit_inside_the_axis() {
        let hist = Histogram {
            edges: vec![0.0, 0.1, 0.2],
            hard: vec![0, 0],
            semihard: vec![5, 7],
            easy: vec![0, 0],
        };
        let (lo, hi) = x_range(&hist, 0.2);
        assert!(lo < 0.0 && hi > 0.2, "{lo}..{hi}");
    }

    #[test]
    fn figures_share_one_format_and_counts_have_separators() {
        assert_eq!(shown_value(1.0), "1.0000");
        assert_eq!(shown_value(0.0), "0.0000");
        assert_eq!(shown_value(0.0012), "0.0012");
        assert_eq!(shown_value(0.000012), "1.200e-5");
        assert_eq!(count_cell(19761), "<td data-value=\"19761\">19,761</td>");
        assert_eq!(count_label(&6000), "6,000");
    }

    fn labels_batch(violation: &[f64], loss: &[f64]) -> RecordBatch {
        let n = violation.len();
        let f = |v: &[f64]| -> ArrayRef {
            let mut v = v.to_vec();
            v.push(0.0);
            Arc::new(Float64Array::from(v))
        };
        let u = |x: u64| -> ArrayRef { Arc::new(UInt64Array::from(vec![x; n + 1])) };
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "label",
                Arc::new(Int64Array::from_iter((0..=n as i64).map(Some))),
            ),
            ("anchors", u(10)),
            ("triplets", u(50)),
            ("anchors_without_negative", u(0)),
            ("neighbour_violation_share", f(violation)),
            ("active_fraction", f(&vec![1.0; n])),
            ("loss_mean", f(loss)),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    #[test]
    fn labels_are_ranked_by_the_first_figure_that_varies() {
        let (rows, by) = worst_labels(&labels_batch(&[0.2, 0.9, 0.5], &[0.1, 0.1, 0.1]));
        assert_eq!(by, Ranking::NeighbourViolation);
        assert_eq!(rows[0].label, "1");
        // Every share the same: the mean loss decides.
        let (rows, by) = worst_labels(&labels_batch(&[1.0, 1.0, 1.0], &[0.1, 0.05, 0.3]));
        assert_eq!(by, Ranking::LossMean);
        let order: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(order, ["2", "0", "1"]);
        assert!(by.describe().contains("then (tied on it) the mean loss"));
        // Ties among the first ones only: the shares rank, the loss breaks the tie.
        let (rows, _) = worst_labels(&labels_batch(&[1.0, 1.0, 0.5], &[0.1, 0.3, 0.9]));
        let order: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(order, ["1", "0", "2"]);
    }

    #[test]
    fn the_configuration_shows_only_what_applies() {
        let mut options = MiningOptions::default();
        options.input.paths = vec!["data.parquet".into()];
        let labelled = applicable_config(&options);
        assert!(labelled.contains("label_col"));
        assert!(!labelled.contains("qrels_query_col"), "{labelled}");
        options.input.paths.clear();
        options.input.queries = vec!["q.parquet".into()];
        options.input.corpus = vec!["c.parquet".into()];
        let retrieval = applicable_config(&options);
        assert!(retrieval.contains("qrels_query_col"));
        assert!(!retrieval.contains("label_col"), "{retrieval}");
    }

    #[test]
    fn kinds_that_differ_by_orders_of_magnitude_get_a_panel_each() {
        let hist = |hard: u64, easy: u64| Histogram {
            edges: vec![-1.0, 0.0, 1.0],
            hard: vec![hard, 0],
            semihard: vec![0, 0],
            easy: vec![0, easy],
        };
        assert!(histogram_svg(&hist(200, 100_000), 0.2).1);
        assert!(!histogram_svg(&hist(500, 900), 0.2).1);
        let (svg, _) = histogram_svg(&hist(500, 900), 0.2);
        let texts = svg_texts(&svg);
        assert!(texts.iter().any(|t| t == "800"), "whole counts: {texts:?}");
        assert!(!texts.iter().any(|t| t == "800.0"), "{texts:?}");
    }

    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("</text>")
            .filter_map(|part| part.rsplit_once('>').map(|(_, t)| t.trim().to_string()))
            .collect()
    }

    #[test]
    fn chart_text_is_as_large_as_body_text() {
        let hist = Histogram {
            edges: vec![-1.0, 0.0, 1.0],
            hard: vec![5, 0],
            semihard: vec![0, 0],
            easy: vec![0, 7],
        };
        let (svg, _) = histogram_svg(&hist, 0.2);
        let sizes: Vec<f64> = svg
            .split("font-size=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next()?.parse().ok())
            .collect();
        assert!(!sizes.is_empty());
        assert!(sizes.iter().all(|&px| px >= 15.0), "{sizes:?}");
    }
}
