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

use super::{Histogram, Totals};
use crate::config::MiningOptions;

/// What the page shows.
pub struct Page<'a> {
    pub batch: &'a RecordBatch,
    pub totals: &'a Totals,
    pub histogram: &'a Histogram,
    pub options: &'a MiningOptions,
    pub warnings: &'a [String],
}

const HARD: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const SEMIHARD: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const EASY: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
/// Labels shown in the per-label table and chart, worst first.
const WORST_LABELS: usize = 30;

/// Renders the page.
pub fn render(page: &Page) -> String {
    let t = page.totals;
    let margin = page.options.mine.margin;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tripmine report</title><style>{CSS}</style></head><body>\n\
         <h1>tripmine report</h1>\n<p class=\"sub\">tripmine {} &middot; {} &middot; metric {:?}, margin {margin}, \
         index {}</p>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&page
            .options
            .input
            .all_paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")),
        page.options.mine.metric,
        esc(&page.options.mine.index),
    );
    if !page.warnings.is_empty() {
        h.push_str(
            "<div class=\"warn\" id=\"collapse-warnings\"><b>Embeddings look collapsed</b><ul>",
        );
        for w in page.warnings {
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
    h.push_str("</table>\n");

    h.push_str(
        "<h2>Distribution of d_an &minus; d_ap</h2>\n<div class=\"chart\" id=\"t-histogram\">",
    );
    h.push_str(&histogram_svg(page.histogram, margin));
    h.push_str(
        "</div>\n<p class=\"legend\"><span style=\"color:#d62728\">&#9632; hard</span> \
         <span style=\"color:#ff7f0e\">&#9632; semi-hard</span> \
         <span style=\"color:#2ca02c\">&#9632; easy</span> &middot; dashed lines at 0 and at the margin</p>\n",
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

    let worst = worst_labels(page.batch);
    let _ = write!(
        h,
        "<h2>Labels, worst first</h2>\n<p class=\"sub\">By the share of anchors whose nearest \
         other-label row violates the margin; {} of {} labels shown.</p>\n<div class=\"chart\" id=\"label-chart\">{}</div>\n",
        worst.len(),
        page.batch.num_rows().saturating_sub(1),
        labels_svg(&worst)
    );
    h.push_str(
        "<table id=\"labels\"><tr><th>label</th><th>anchors</th><th>triplets</th>\
         <th>neighbour violation share</th><th>active fraction</th><th>mean loss</th></tr>",
    );
    for l in &worst {
        let _ = write!(
            h,
            "<tr data-label=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td>{3}{4}{5}</tr>",
            esc(&l.label),
            l.anchors,
            l.triplets,
            value_cell(l.violation),
            value_cell(l.active),
            value_cell(l.loss_mean),
        );
    }
    h.push_str("</table>\n");

    let config = toml::to_string_pretty(&page.options.shaping()).unwrap_or_default();
    let _ = write!(
        h,
        "<h2>Configuration</h2>\n<pre id=\"config\">{}</pre>\n</body></html>\n",
        esc(&config)
    );
    h
}

fn figure_row(h: &mut String, name: &str, what: &str, value: Option<f64>) {
    let _ = write!(
        h,
        "<tr data-figure=\"{name}\"><th>{what}</th>{}</tr>",
        value_cell(value)
    );
}

fn value_cell(value: Option<f64>) -> String {
    match value {
        Some(v) => format!("<td data-value=\"{v:?}\">{}</td>", shown_value(v)),
        None => "<td data-value=\"\">&ndash;</td>".into(),
    }
}

fn shown_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
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
    violation: Option<f64>,
    active: Option<f64>,
    loss_mean: Option<f64>,
}

/// Per-label rows (the overall row left out), worst neighbour violation share first.
fn worst_labels(batch: &RecordBatch) -> Vec<LabelRow> {
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
    let (Some(violation), Some(active), Some(loss), Some(anchors), Some(triplets)) = (
        f64_col("neighbour_violation_share"),
        f64_col("active_fraction"),
        f64_col("loss_mean"),
        u64_col("anchors"),
        u64_col("triplets"),
    ) else {
        return Vec::new();
    };
    let opt = |a: &arrow::array::Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
    let labels = batch.column(0);
    let mut rows: Vec<LabelRow> = (0..batch.num_rows().saturating_sub(1))
        .map(|i| LabelRow {
            label: array_value_to_string(labels, i).unwrap_or_default(),
            anchors: anchors.value(i),
            triplets: triplets.value(i),
            violation: opt(&violation, i),
            active: opt(&active, i),
            loss_mean: opt(&loss, i),
        })
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &LabelRow| (r.violation.unwrap_or(-1.0), r.active.unwrap_or(-1.0));
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rows.truncate(WORST_LABELS);
    rows
}

/// Stacked histogram of `t` by kind, with the band edges at 0 and the margin.
fn histogram_svg(hist: &Histogram, margin: f32) -> String {
    let mut svg = String::new();
    if hist.edges.len() < 2 {
        return "<p>No triplets.</p>".into();
    }
    {
        let root = SVGBackend::with_string(&mut svg, (760, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let lo = hist.edges[0].min(0.0);
        let hi = hist.edges[hist.edges.len() - 1].max(margin as f64);
        let top = (0..hist.hard.len())
            .map(|i| hist.hard[i] + hist.semihard[i] + hist.easy[i])
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0.0..top * 1.05)
        else {
            return String::new();
        };
        let _ = chart
            .configure_mesh()
            .x_desc("d_an - d_ap")
            .y_desc("triplets")
            .light_line_style(WHITE)
            .draw();
        for i in 0..hist.hard.len() {
            let (x0, x1) = (hist.edges[i], hist.edges[i + 1]);
            let mut base = 0.0;
            for (count, color) in [
                (hist.hard[i], HARD),
                (hist.semihard[i], SEMIHARD),
                (hist.easy[i], EASY),
            ] {
                if count > 0 {
                    let top = base + count as f64;
                    let _ = chart.draw_series(std::iter::once(Rectangle::new(
                        [(x0, base), (x1, top)],
                        color.filled(),
                    )));
                    base = top;
                }
            }
        }
        for x in [0.0, margin as f64] {
            let _ = chart.draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, top * 1.05)],
                6,
                4,
                BLACK.stroke_width(1),
            ));
        }
        let _ = root.present();
    }
    svg
}

/// Horizontal bars of the neighbour violation share of the worst labels.
fn labels_svg(rows: &[LabelRow]) -> String {
    let shown: Vec<&LabelRow> = rows.iter().take(20).collect();
    if shown.is_empty() {
        return String::new();
    }
    let mut svg = String::new();
    {
        let height = 40 + 22 * shown.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = shown.len();
        let Ok(mut chart) = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..1.0f64, 0.0..n as f64)
        else {
            return String::new();
        };
        let _ = chart
            .configure_mesh()
            .y_labels(0)
            .x_desc("share of anchors whose nearest other-label row violates the margin")
            .light_line_style(WHITE)
            .draw();
        // Worst at the top; each bar carries its label and value.
        let y_of = |i: usize| (n - 1 - i) as f64;
        let _ = chart.draw_series(shown.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [
                    (0.0, y_of(i) + 0.15),
                    (r.violation.unwrap_or(0.0), y_of(i) + 0.85),
                ],
                HARD.mix(0.35).filled(),
            )
        }));
        let _ = chart.draw_series(shown.iter().enumerate().map(|(i, r)| {
            let text = format!(
                "{}  ({})",
                r.label,
                r.violation.map_or("-".into(), shown_value)
            );
            Text::new(text, (0.01, y_of(i) + 0.7), ("sans-serif", 13).into_font())
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
