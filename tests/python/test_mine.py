"""tripmine.mine gives what `tripmine mine` gives, from every kind of source."""

import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tripmine

OPTION_SETS = [
    {},
    {"negatives": "hard", "num_negatives": 2, "positives": "all"},
    {"metric": "cosine", "sample": "random", "seed": 7, "margin": 0.05},
]


def cli_flags(options: dict) -> list:
    flags = []
    for name, value in options.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def cli_triplets(cli: Path, table_file: Path, tmp_path: Path, options: dict) -> pa.Table:
    out = tmp_path / "cli.parquet"
    subprocess.run(
        [cli, "mine", "--no-progress", "--force", "--in", table_file, "--out", out,
         "--report", tmp_path / "cli-report.parquet", *cli_flags(options)],
        check=True,
        capture_output=True,
    )
    return pq.read_table(out)


@pytest.mark.parametrize("options", OPTION_SETS, ids=["default", "hard-all", "cosine-random"])
def test_every_source_gives_the_cli_triplets(cli, table, table_file, tmp_path, options):
    expected = cli_triplets(cli, table_file, tmp_path, options)
    assert expected.num_rows > 0
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), tmp_path / "a.parquet")
    pq.write_table(table.slice(half), tmp_path / "b.parquet")
    sources = {
        "path": dict(source=table_file),
        "str path": dict(source=str(table_file)),
        "list of paths": dict(source=[tmp_path / "a.parquet", tmp_path / "b.parquet"]),
        "pyarrow table": dict(source=table),
        "record batch reader": dict(source=pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=500))),
        "polars": dict(source=pl.from_arrow(table)),
        "numpy": dict(embeddings=vectors, labels=table.column("label").to_numpy(), ids=table.column("id").to_pylist()),
    }
    for name, source in sources.items():
        result = tripmine.mine(**source, **options, progress=False)
        # Ids keep their input type: polars hands strings over as string views.
        assert result.triplets.cast(expected.schema).equals(expected), name
        assert result.report.num_rows > 0, name


def test_a_hugging_face_dataset_is_a_source(table):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset(table)
    expected = tripmine.mine(table).triplets
    assert tripmine.mine(dataset).triplets.equals(expected)
    # A selection is mined as selected.
    picked = dataset.select(range(0, table.num_rows, 2))
    assert tripmine.mine(picked).triplets.equals(tripmine.mine(table.take(list(range(0, table.num_rows, 2)))).triplets)


def test_out_and_report_are_written_as_the_cli_writes_them(table, tmp_path):
    result = tripmine.mine(table, out=tmp_path / "t.parquet", report=tmp_path / "r.parquet", report_html=tmp_path / "r.html")
    assert (tmp_path / "t.parquet").is_file() and (tmp_path / "r.html").is_file()
    assert result.triplets.equals(pq.read_table(tmp_path / "t.parquet"))
    assert result.summary["totals"]["triplets"] == result.triplets.num_rows
    assert result.summary["out"] == str(tmp_path / "t.parquet")


def test_summary_is_the_summary_json(table, tmp_path):
    result = tripmine.mine(table, summary_json=tmp_path / "s.json")
    import json

    written = json.loads((tmp_path / "s.json").read_text())
    assert written["totals"] == result.summary["totals"]
    assert result.summary["rows"] == table.num_rows


def test_retrieval_inputs_are_options(cli, tmp_path):
    subprocess.run([cli, "gen", "--retrieval", "--rows", "400", "--queries", "60", "--dim", "8", "--out", tmp_path / "ret"], check=True, capture_output=True)
    ret = tmp_path / "ret"
    result = tripmine.mine(queries=ret / "queries.parquet", corpus=ret / "corpus.parquet", qrels=ret / "qrels.parquet", metric="cosine", range_min=2, range_max=30, positive_percent=95)
    subprocess.run(
        [cli, "mine", "--no-progress", "--queries", ret / "queries.parquet", "--corpus", ret / "corpus.parquet", "--qrels", ret / "qrels.parquet",
         "--metric", "cosine", "--range-min", "2", "--range-max", "30", "--positive-percent", "95", "--out", tmp_path / "c.parquet", "--report", tmp_path / "cr.parquet"],
        check=True, capture_output=True,
    )
    assert result.triplets.num_rows > 0
    assert result.triplets.equals(pq.read_table(tmp_path / "c.parquet"))
    as_tables = tripmine.mine(
        queries=pq.read_table(ret / "queries.parquet"), corpus=pl.read_parquet(ret / "corpus.parquet"),
        qrels=pq.read_table(ret / "qrels.parquet"), metric="cosine", range_min=2, range_max=30, positive_percent=95,
    )
    assert as_tables.triplets.cast(result.triplets.schema).equals(result.triplets)


def test_a_pipeline_file_runs(table_file, tmp_path):
    pipeline = tmp_path / "job.toml"
    pipeline.write_text(
        f'[input]\npaths = ["{table_file}"]\n[mine]\nnum_negatives = 2\n'
        f'[output]\nout = "{tmp_path / "p.parquet"}"\nreport = "{tmp_path / "pr.parquet"}"\n[run]\nprogress = false\n'
    )
    summary = tripmine.run(pipeline)
    assert summary["skipped"] is False and summary["totals"]["triplets"] > 0
    assert tripmine.run(pipeline)["skipped"] is True
    changed = tripmine.run(pipeline, overrides={"mine.num_negatives": 1})
    assert changed["skipped"] is False
    assert changed["totals"]["triplets"] < summary["totals"]["triplets"]


def test_a_flag_alias_is_an_option_too(table):
    # `--check-recall` is an alias of `--recall-sample`.
    result = tripmine.mine(table, index="IVF16,Flat", check_recall=40, target_recall=0)
    assert result.summary["totals"]["recall_anchors"] == 40


def test_options_lists_every_flag_with_its_key():
    names = {o["name"]: o["key"] for o in tripmine.options()}
    assert names["num_negatives"] == "mine.num_negatives"
    assert names["report_html"] == "report.html"
    assert names["progress"] == "run.progress"
    assert "in" not in names


def test_a_state_and_a_delta_follow_a_growing_table(table, tmp_path):
    """`state=` and `delta=` as in the CLI: the second run mines incrementally, and its delta
    turns the first output into the second (negative ranks aside)."""
    half = table.num_rows * 9 // 10
    parts = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    pq.write_table(table.slice(0, half), parts[0])
    pq.write_table(table.slice(half), parts[1])
    keys = ["anchor_id", "positive_id", "negative_id"]
    flags = dict(state=tmp_path / "state", delta=tmp_path / "d.parquet", progress=False)
    first = tripmine.mine(source=parts[:1], out=tmp_path / "o1.parquet", **flags)
    second = tripmine.mine(source=parts, out=tmp_path / "o2.parquet", **flags)
    assert second.summary["changes"]["mode"] == "incremental"
    delta = pq.read_table(tmp_path / "d.parquet").to_pylist()
    rows = {tuple(r[k] for k in keys) for r in first.triplets.to_pylist()}
    for r in delta:
        key = tuple(r[k] for k in keys)
        if r["op"] == "remove":
            rows.remove(key)
        else:
            rows.add(key)
    assert rows == {tuple(r[k] for k in keys) for r in second.triplets.to_pylist()}
    assert 0 < len(delta) < second.triplets.num_rows
