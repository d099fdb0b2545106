"""tripmine.ray.mine on a real local Ray cluster (a head and a worker node, one CPU each) gives
what tripmine.mine gives on one machine: the same triplet rows in the same order, the same
report rows and figures."""

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tripmine

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

import tripmine.ray  # noqa: E402

from conftest import overlapping_table  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def report_figures(path: Path) -> tuple:
    """The report's rows, and the figures its metadata keeps (the rest holds timings)."""
    report = pq.read_table(path)
    meta = report.schema.metadata
    figures = tuple(json.loads(meta[key]) for key in (b"tripmine.totals", b"tripmine.histogram"))
    return report.replace_schema_metadata(None), figures


def assert_same_run(tmp_path: Path, source, segment_anchors: int, **options) -> dict:
    """Mines `source` on one machine and on the cluster; asserts the outputs are the same."""
    single = tripmine.mine(
        source, out=tmp_path / "one.parquet", report=tmp_path / "one-report.parquet", **options
    )
    spread = tripmine.ray.mine(
        source,
        out=tmp_path / "ray.parquet",
        report=tmp_path / "ray-report.parquet",
        work_dir=tmp_path / "work",
        segment_anchors=segment_anchors,
        **options,
    )
    assert spread.triplets.num_rows > 0
    assert spread.triplets.equals(single.triplets)
    assert report_figures(tmp_path / "ray-report.parquet") == report_figures(
        tmp_path / "one-report.parquet"
    )
    return spread.summary


def test_the_exact_default_gives_the_single_machine_outputs(cluster, table_file, tmp_path):
    summary = assert_same_run(tmp_path, table_file, 700)
    assert summary["exact"]
    segments = sorted((tmp_path / "work" / "segments").iterdir())
    assert len(segments) == 5, "3,000 anchors in segments of 700"


def test_seeded_random_sampling_and_the_reuse_cap_give_the_single_machine_outputs(
    cluster, table_file, tmp_path
):
    assert_same_run(
        tmp_path, table_file, 1000, sample="random", seed=5, num_negatives=3, max_negative_reuse=2
    )


def test_an_arrow_table_travels_to_the_plan_task(cluster, table, tmp_path):
    assert_same_run(tmp_path, table, 900, negatives="hard", num_negatives=2)


def test_retrieval_mode_with_guards_gives_the_single_machine_outputs(cluster, cli, tmp_path):
    ex = tmp_path / "ex"
    subprocess.run(
        [cli, "gen", "--retrieval", "--rows", "1500", "--labels", "12", "--queries", "200",
         "--dim", "16", "--seed", "2", "--out", ex],
        check=True,
        capture_output=True,
    )
    assert_same_run(
        tmp_path,
        None,
        60,
        queries=ex / "queries.parquet",
        corpus=ex / "corpus.parquet",
        qrels=ex / "qrels.parquet",
        metric="cosine",
        positive_margin=0.05,
        range_max=50,
        num_negatives=4,
    )


def test_an_ivf_pq_index_from_a_saved_file_gives_the_single_machine_outputs(
    cluster, tmp_path
):
    path = tmp_path / "t.parquet"
    pq.write_table(overlapping_table(rows=4000, dim=16, labels=20, seed=3), path)
    index = tmp_path / "ivfpq.faiss"
    tripmine.mine(path, index="IVF16,PQ8x4fs", save_index=index, num_negatives=1)
    summary = assert_same_run(tmp_path, path, 1500, load_index=index, recall_sample=200)
    assert not summary["exact"]
    assert summary["index"] == "IVF16,PQ8x4fs"
    assert summary["totals"]["recall_negatives"] is not None


def test_a_segment_task_killed_once_is_retried_and_the_outputs_are_the_same(
    cluster, table_file, tmp_path
):
    marker = tmp_path / "killed-once"
    env = {
        "env_vars": {
            "TRIPMINE_TEST_ABORT_AT": "segment",
            "TRIPMINE_TEST_ABORT_ONCE": str(marker),
        }
    }
    single = tripmine.mine(table_file, out=tmp_path / "one.parquet", report=tmp_path / "r1.parquet")
    spread = tripmine.ray.mine(
        table_file,
        out=tmp_path / "ray.parquet",
        report=tmp_path / "r2.parquet",
        segment_anchors=1000,
        max_retries=2,
        runtime_env=env,
    )
    assert marker.exists(), "a segment's worker was killed"
    assert spread.triplets.equals(single.triplets)


def test_a_quality_gate_raises_after_the_outputs_are_written(cluster, table_file, tmp_path):
    with pytest.raises(tripmine.QualityGateError) as gated:
        tripmine.ray.mine(
            table_file,
            out=tmp_path / "ray.parquet",
            report=tmp_path / "ray-report.parquet",
            fail_if=["triplets > 10"],
        )
    assert gated.value.summary["totals"]["triplets"] > 10
    assert gated.value.result.triplets.num_rows == gated.value.summary["totals"]["triplets"]


def test_a_bad_option_is_a_config_error_before_any_task(cluster, table_file, tmp_path):
    with pytest.raises(tripmine.ConfigError, match="did you mean num_negatives"):
        tripmine.ray.mine(
            table_file, out=tmp_path / "o.parquet", report=tmp_path / "r.parquet",
            num_negatves=3,
        )


def test_bad_data_in_the_plan_task_is_the_same_data_error(cluster, tmp_path):
    path = tmp_path / "one-label.parquet"
    pq.write_table(overlapping_table(rows=50, labels=1), path)
    with pytest.raises(tripmine.DataError, match="at least two"):
        tripmine.ray.mine(path, out=tmp_path / "o.parquet", report=tmp_path / "r.parquet")


def test_without_a_work_dir_a_cluster_of_several_nodes_is_warned(cluster, table_file, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="tripmine"):
        tripmine.ray.mine(table_file, out=tmp_path / "o.parquet", report=tmp_path / "r.parquet")
    assert any("storage every node reads" in r.getMessage() for r in caplog.records)
