//! The HTML report in a real headless browser (Debian's chromium): it renders, its charts are
//! there, and the numbers in it equal those of the Parquet report.

mod common;

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, UInt64Type};
use arrow::util::display::array_value_to_string;
use common::bin::{read, tripmine};
use predicates::prelude::*;
use tempfile::TempDir;

/// The DOM chromium builds from the page (no network, a throwaway profile).
fn rendered_dom(page: &Path, profile: &Path) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (scripts/setup-debian.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `data-value` of the first cell after `marker` in the DOM.
fn value_after(dom: &str, marker: &str) -> Option<f64> {
    let at = dom.find(marker)?;
    let rest = &dom[at..];
    let v = rest.find("data-value=\"")? + "data-value=\"".len();
    let end = rest[v..].find('"')?;
    rest[v..v + end].parse().ok()
}

#[test]
fn the_html_report_renders_with_charts_and_the_parquet_figures() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    tripmine()
        .args([
            "gen",
            "--rows",
            "1500",
            "--dim",
            "16",
            "--labels",
            "12",
            "--separation",
            "2",
            "--out",
        ])
        .arg(&input)
        .assert()
        .success();
    let page = dir.path().join("report.html");
    tripmine()
        .current_dir(dir.path())
        .args(["mine", "--no-progress", "--negatives", "violating", "--in"])
        .arg(&input)
        .arg("--report-html")
        .arg(&page)
        .assert()
        .success();

    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no script, stylesheet, image or font to fetch (SVG's xmlns is a name).
    for fetch in [
        "<script", "<link", "<img", "src=", "href=", "url(", "@import",
    ] {
        assert!(!html.contains(fetch), "the page holds `{fetch}`");
    }

    let dom = rendered_dom(&page, &dir.path().join("profile"));
    assert!(dom.contains("<h1>tripmine report</h1>"));
    for chart in ["id=\"t-histogram\"", "id=\"label-chart\""] {
        let at = dom.find(chart).unwrap_or_else(|| panic!("{chart} missing"));
        assert!(dom[at..].contains("<svg"), "{chart} holds an SVG");
    }
    assert!(dom.matches("<rect").count() > 20, "bars are drawn");

    let report = read(&dir.path().join("report.parquet"));
    let overall = report.num_rows() - 1;
    for name in [
        "anchors",
        "triplets",
        "hard",
        "semihard",
        "easy",
        "anchors_without_negative",
    ] {
        let want = report
            .column_by_name(name)
            .unwrap()
            .as_primitive::<UInt64Type>()
            .value(overall);
        assert_eq!(
            value_after(&dom, &format!("data-figure=\"{name}\"")),
            Some(want as f64),
            "{name}"
        );
    }
    for name in [
        "active_fraction",
        "loss_mean",
        "loss_p50",
        "loss_p90",
        "loss_p99",
        "loss_max",
        "neighbour_violation_share",
    ] {
        let want = report
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(overall);
        assert_eq!(
            value_after(&dom, &format!("data-figure=\"{name}\"")),
            Some(want),
            "{name}"
        );
    }
    // Per-label rows: the shown violation share of every label equals the Parquet one.
    let shares = report
        .column_by_name("neighbour_violation_share")
        .unwrap()
        .as_primitive::<Float64Type>();
    for i in 0..overall {
        let label = array_value_to_string(report.column(0), i).unwrap();
        let want = shares.is_valid(i).then(|| shares.value(i));
        assert_eq!(
            value_after(&dom, &format!("data-label=\"{label}\"")),
            want,
            "label {label}"
        );
    }
}

#[test]
fn collapsed_embeddings_are_warned_about_in_the_summary_and_the_page() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = TempDir::new().unwrap();
    // Every vector the same but for noise a million times smaller than the vectors.
    let (rows, dim) = (300usize, 8usize);
    let values: Vec<f32> = (0..rows * dim)
        .map(|i| 1.0 + 1e-6 * (((i * 7919) % 97) as f32 / 97.0))
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let emb: ArrayRef = Arc::new(
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(values)), None)
            .unwrap(),
    );
    let labels: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..rows as i64).map(|i| i % 5),
    ));
    let schema = Schema::new(vec![
        Field::new("label", DataType::Int64, false),
        Field::new("embedding", emb.data_type().clone(), false),
    ]);
    let input = dir.path().join("collapsed.parquet");
    tripmine::io::write_parquet(
        &input,
        &RecordBatch::try_new(Arc::new(schema), vec![labels, emb]).unwrap(),
    )
    .unwrap();

    let page = dir.path().join("report.html");
    tripmine()
        .current_dir(dir.path())
        .args(["mine", "--no-progress", "--in"])
        .arg(&input)
        .arg("--report-html")
        .arg(&page)
        .assert()
        .success()
        .stdout(predicates::str::contains("WARNING"))
        .stdout(predicates::str::contains("barely vary"));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("id=\"collapse-warnings\""));
}

#[test]
fn healthy_embeddings_raise_no_collapse_warning() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    tripmine()
        .args([
            "gen", "--rows", "500", "--dim", "8", "--labels", "5", "--out",
        ])
        .arg(&input)
        .assert()
        .success();
    tripmine()
        .current_dir(dir.path())
        .args(["mine", "--no-progress", "--in"])
        .arg(&input)
        .assert()
        .success()
        .stdout(predicates::str::contains("WARNING").not());
}
