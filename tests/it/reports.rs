//! The HTML report in a real headless browser (Debian's chromium): it renders, its charts are
//! there, and the numbers in it equal those of the Parquet report.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::common::bin::{gen_table, read, tripmine};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use arrow::util::display::array_value_to_string;
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
    gen_table(
        &input,
        &[
            "--rows",
            "1500",
            "--dim",
            "16",
            "--labels",
            "12",
            "--separation",
            "2",
        ],
    );
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
        "active_fraction",
        "loss_mean",
        "loss_p50",
        "loss_p90",
        "loss_p99",
        "loss_max",
        "neighbour_violation_share",
        "pairs",
        "short_pairs",
        "dropped_pairs",
        "removed_negative_reuse",
    ] {
        let column = arrow::compute::cast(
            report.column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Float64,
        )
        .unwrap();
        let want = column.as_primitive::<Float64Type>().value(overall);
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
    gen_table(&input, &["--rows", "500", "--dim", "8", "--labels", "5"]);
    tripmine()
        .current_dir(dir.path())
        .args(["mine", "--no-progress", "--in"])
        .arg(&input)
        .assert()
        .success()
        .stdout(predicates::str::contains("WARNING").not());
}

#[test]
fn diff_reports_overlap_configuration_changes_and_the_labels_that_moved_most() {
    use arrow::datatypes::Float32Type;

    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    gen_table(
        &input,
        &[
            "--rows",
            "800",
            "--dim",
            "8",
            "--labels",
            "6",
            "--separation",
            "1.5",
        ],
    );
    let mine = |out: &str, margin: &str| {
        tripmine()
            .current_dir(dir.path())
            .args([
                "mine",
                "--no-progress",
                "--negatives",
                "hardest",
                "--margin",
                margin,
                "--in",
            ])
            .arg(&input)
            .args(["--out", out, "--report", &format!("report-{out}")])
            .assert()
            .success();
    };
    mine("a.parquet", "0.2");
    mine("b.parquet", "1.0");

    // The same run against itself: full overlap, nothing moved.
    tripmine()
        .current_dir(dir.path())
        .args([
            "diff",
            "a.parquet",
            "a.parquet.manifest.json",
            "--out",
            "same.parquet",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "overlap: 1.0000 mean Jaccard by anchor, 1.0000 over all triplets",
        ))
        .stdout(predicate::str::contains("configurations: the same"));

    tripmine()
        .current_dir(dir.path())
        .args(["diff", "a.parquet", "b.parquet", "--out", "diff.parquet"])
        .assert()
        .success()
        .stdout(predicate::str::contains("labels that moved most"))
        .stdout(predicate::str::contains("configurations DIFFER"))
        .stdout(predicate::str::contains("mine.margin: 0.2 -> 1.0"));
    let d = read(&dir.path().join("diff.parquet"));
    assert_eq!(d.num_rows(), 6);
    // Labels keep the input's type.
    assert_eq!(
        d.column_by_name("label").unwrap().data_type(),
        &arrow::datatypes::DataType::Int64
    );
    // Violation rates equal those counted from each run's triplets.
    let rates = |file: &str| {
        let t = read(&dir.path().join(file));
        let labels = arrow::compute::cast(
            t.column_by_name("anchor_label").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let labels = labels.as_string::<i32>();
        let loss = t
            .column_by_name("loss")
            .unwrap()
            .as_primitive::<Float32Type>();
        let mut c: HashMap<String, (f64, f64)> = HashMap::new();
        for i in 0..t.num_rows() {
            let e = c.entry(labels.value(i).to_string()).or_default();
            e.0 += 1.0;
            e.1 += (loss.value(i) > 0.0) as u8 as f64;
        }
        c.into_iter()
            .map(|(k, (n, v))| (k, v / n))
            .collect::<HashMap<_, _>>()
    };
    let (ra, rb) = (rates("a.parquet"), rates("b.parquet"));
    let labels = arrow::compute::cast(
        d.column_by_name("label").unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let labels = labels.as_string::<i32>();
    let col = |n: &str| {
        d.column_by_name(n)
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone()
    };
    let (a, b, delta, nbr_delta) = (
        col("violation_rate_a"),
        col("violation_rate_b"),
        col("violation_rate_delta"),
        col("neighbour_violation_share_delta"),
    );
    let moved = col("movement");
    let mut movement = Vec::new();
    for i in 0..d.num_rows() {
        let l = labels.value(i);
        assert!((a.value(i) - ra[l]).abs() < 1e-12, "label {l}");
        assert!((b.value(i) - rb[l]).abs() < 1e-12, "label {l}");
        assert!((delta.value(i) - (rb[l] - ra[l])).abs() < 1e-12);
        assert_eq!(nbr_delta.value(i), 0.0, "same data, same health figure");
        // Movement is at least the violation rate's change, and never more than 1.
        assert!(moved.value(i) >= delta.value(i).abs() - 1e-12);
        assert!(moved.value(i) <= 1.0);
        movement.push(moved.value(i));
    }
    assert!(
        movement.windows(2).all(|w| w[0] >= w[1]),
        "moved most first: {movement:?}"
    );
    assert!(movement[0] > 0.0, "a larger margin raises violation rates");
}

#[test]
fn diff_ranks_saturated_semihard_runs_by_what_moved_not_by_label_text() {
    use arrow::datatypes::UInt64Type;

    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    // Twelve labels: text order (0, 1, 10, 11, 2, ...) is not number order.
    gen_table(
        &input,
        &[
            "--rows",
            "900",
            "--dim",
            "8",
            "--labels",
            "12",
            "--separation",
            "1.2",
        ],
    );
    for (out, margin) in [("a.parquet", "0.2"), ("b.parquet", "0.6")] {
        tripmine()
            .current_dir(dir.path())
            .args(["mine", "--no-progress", "--margin", margin, "--in"])
            .arg(&input)
            .args(["--out", out, "--report", &format!("report-{out}")])
            .assert()
            .success();
    }
    tripmine()
        .current_dir(dir.path())
        .args(["diff", "a.parquet", "b.parquet", "--out", "diff.parquet"])
        .assert()
        .success();
    let d = read(&dir.path().join("diff.parquet"));
    let f = |n: &str| {
        d.column_by_name(n)
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone()
    };
    let u = |n: &str| {
        d.column_by_name(n)
            .unwrap()
            .as_primitive::<UInt64Type>()
            .clone()
    };
    let (rate_a, rate_b, moved) = (f("violation_rate_a"), f("violation_rate_b"), f("movement"));
    let (ta, tb) = (u("triplets_a"), u("triplets_b"));
    // Semi-hard triplets all violate: the rates cannot tell the labels apart.
    for i in 0..d.num_rows() {
        assert_eq!((rate_a.value(i), rate_b.value(i)), (1.0, 1.0));
    }
    // The triplet counts can: the label whose count moved most comes first.
    let relative = |i: usize| {
        let (a, b) = (ta.value(i) as f64, tb.value(i) as f64);
        (b - a).abs() / a.max(b)
    };
    let best = (0..d.num_rows()).map(relative).fold(0.0, f64::max);
    assert!(best > 0.0);
    assert!((moved.value(0) - best).abs() < 1e-9 || moved.value(0) > best);
    assert!(moved.values().windows(2).all(|w| w[0] >= w[1]));
}

/// Per anchor id, its (positive id, negative id) pairs.
type PairSets = HashMap<String, HashSet<(String, String)>>;

/// A run's triplets read back as text: per anchor id its pairs, and its label.
fn triplet_sets(path: &std::path::Path) -> (PairSets, HashMap<String, String>) {
    let t = read(path);
    let text = |n: &str| {
        arrow::compute::cast(
            t.column_by_name(n).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap()
    };
    let (a, p, n, l) = (
        text("anchor_id"),
        text("positive_id"),
        text("negative_id"),
        text("anchor_label"),
    );
    let (a, p, n, l) = (
        a.as_string::<i32>(),
        p.as_string::<i32>(),
        n.as_string::<i32>(),
        l.as_string::<i32>(),
    );
    let (mut sets, mut labels) = (HashMap::new(), HashMap::new());
    for i in 0..t.num_rows() {
        sets.entry(a.value(i).to_string())
            .or_insert_with(HashSet::new)
            .insert((p.value(i).to_string(), n.value(i).to_string()));
        labels.insert(a.value(i).to_string(), l.value(i).to_string());
    }
    (sets, labels)
}

#[test]
fn diff_overlap_equals_the_triplet_sets_in_memory_and_in_partitions_on_disk() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    gen_table(&input, &["--rows", "1500", "--dim", "8", "--labels", "9"]);
    // Random samples of two seeds, one of them on a sample of anchors: partly overlapping
    // triplets, anchors in one run only.
    for (out, extra) in [
        ("a.parquet", vec!["--seed", "1"]),
        ("b.parquet", vec!["--seed", "2", "--anchors-sample", "1100"]),
    ] {
        tripmine()
            .current_dir(dir.path())
            .args([
                "mine",
                "--no-progress",
                "--sample",
                "random",
                "--num-negatives",
                "3",
            ])
            .args(extra)
            .arg("--in")
            .arg(&input)
            .args(["--out", out])
            .assert()
            .success();
    }
    let diff = |out: &str, extra: &[&str]| {
        tripmine()
            .env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
            .current_dir(dir.path())
            .args(["-v", "diff", "a.parquet", "b.parquet", "--out", out])
            .args(extra)
            .assert()
            .success()
    };
    let in_memory = diff("memory.parquet", &[]);
    let stdout = String::from_utf8_lossy(&in_memory.get_output().stdout).to_string();
    std::fs::create_dir(dir.path().join("scratch")).unwrap();
    diff(
        "disk.parquet",
        &["--memory-limit", "64KiB", "--scratch-dir", "scratch"],
    )
    .stderr(predicate::str::contains("compared in partitions by anchor"));
    let bytes = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    assert!(
        bytes("memory.parquet") == bytes("disk.parquet"),
        "same comparison"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("scratch"))
            .unwrap()
            .count(),
        0,
        "the partitions have no name and leave nothing"
    );

    // The oracle: Jaccard of the (positive, negative) sets per anchor, and of all triplets.
    let (sa, la) = triplet_sets(&dir.path().join("a.parquet"));
    let (sb, lb) = triplet_sets(&dir.path().join("b.parquet"));
    let anchors: HashSet<&String> = sa.keys().chain(sb.keys()).collect();
    let empty = HashSet::new();
    let (mut sum, mut inter_all, mut union_all) = (0.0, 0usize, 0usize);
    let mut by_label: HashMap<String, (f64, f64)> = HashMap::new();
    for a in &anchors {
        let (x, y) = (sa.get(*a).unwrap_or(&empty), sb.get(*a).unwrap_or(&empty));
        let inter = x.intersection(y).count();
        let union = x.len() + y.len() - inter;
        let j = inter as f64 / union as f64;
        sum += j;
        inter_all += inter;
        union_all += union;
        let label = la.get(*a).or_else(|| lb.get(*a)).unwrap();
        let e = by_label.entry(label.clone()).or_default();
        e.0 += j;
        e.1 += 1.0;
    }
    assert!(inter_all > 0 && inter_all < union_all, "partial overlap");
    let expected = format!(
        "overlap: {:.4} mean Jaccard by anchor, {:.4} over all triplets",
        sum / anchors.len() as f64,
        inter_all as f64 / union_all as f64
    );
    assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    let d = read(&dir.path().join("disk.parquet"));
    let labels = arrow::compute::cast(
        d.column_by_name("label").unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let labels = labels.as_string::<i32>();
    let jaccard = d
        .column_by_name("anchor_jaccard")
        .unwrap()
        .as_primitive::<Float64Type>();
    let anchors_b = d
        .column_by_name("anchors_b")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>();
    for i in 0..d.num_rows() {
        let l = labels.value(i);
        let (s, n) = by_label[l];
        assert!((jaccard.value(i) - s / n).abs() < 1e-12, "label {l}");
        let covered = lb.values().filter(|x| x.as_str() == l).count() as u64;
        assert_eq!(anchors_b.value(i), covered, "label {l}");
    }
}
