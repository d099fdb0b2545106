"""Errors are exceptions of the CLI's classes, with the CLI's messages, named for Python."""

import numpy as np
import pyarrow as pa
import pytest

import tripmine


def test_an_unknown_option_is_a_config_error_that_suggests_the_name(table):
    with pytest.raises(tripmine.ConfigError, match=r"unknown option `num_negative`; did you mean num_negatives"):
        tripmine.mine(table, num_negative=3)


def test_a_value_of_the_wrong_kind_names_the_argument(table):
    with pytest.raises(tripmine.ConfigError, match=r'metric="manhattan": unknown variant `manhattan`'):
        tripmine.mine(table, metric="manhattan")
    with pytest.raises(tripmine.ConfigError, match=r"num_negatives="):
        tripmine.mine(table, num_negatives=-2)


def test_an_out_of_range_value_names_the_argument_as_python_spells_it(table):
    with pytest.raises(tripmine.ConfigError, match=r"margin must be a finite number >= 0, got -1"):
        tripmine.mine(table, margin=-1)
    with pytest.raises(tripmine.ConfigError, match=r"max_negative_similarity is a cosine-similarity guard"):
        tripmine.mine(table, max_negative_similarity=0.9)


def test_bad_data_names_the_source_column_and_row(table):
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).copy()
    vectors[123, 4] = np.nan
    with pytest.raises(tripmine.DataError, match=r"<arrays>.*`embedding`.*row 123.*non-finite"):
        tripmine.mine(embeddings=vectors, labels=table.column("label").to_numpy())
    broken = table.set_column(2, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16))
    with pytest.raises(tripmine.DataError, match=r"<pyarrow.Table>.*row 123"):
        tripmine.mine(broken)


def test_a_missing_column_lists_the_columns_present(table):
    with pytest.raises(tripmine.DataError, match=r"column `person` not found; columns present: id"):
        tripmine.mine(table, label_col="person")


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(tripmine.DataError, match=r"no input"):
        tripmine.mine(tmp_path / "nothing.parquet")


def test_a_quality_gate_fails_after_writing(table, tmp_path):
    with pytest.raises(tripmine.QualityGateError, match=r"triplets > 0") as gated:
        tripmine.mine(table, out=tmp_path / "t.parquet", fail_if=["triplets > 0"])
    assert (tmp_path / "t.parquet").is_file()
    assert gated.value.summary["totals"]["triplets"] > 0
    assert gated.value.result.triplets.num_rows == gated.value.summary["totals"]["triplets"]


def test_a_gated_run_without_out_still_gives_its_result(table):
    with pytest.raises(tripmine.QualityGateError) as gated:
        tripmine.mine(table, fail_if=["triplets > 0"])
    # Read before the temporary folder went.
    assert gated.value.result.triplets.num_rows == gated.value.summary["totals"]["triplets"]
    assert gated.value.result.report.num_rows > 0


def test_a_gated_pipeline_run_carries_its_summary(table_file, tmp_path):
    pipeline = tmp_path / "job.toml"
    pipeline.write_text(
        f'[input]\npaths = ["{table_file}"]\n[output]\nout = "{tmp_path / "p.parquet"}"\n'
        f'report = "{tmp_path / "pr.parquet"}"\nfail_if = ["triplets > 0"]\n[run]\nprogress = false\n'
    )
    with pytest.raises(tripmine.QualityGateError) as gated:
        tripmine.run(pipeline)
    assert gated.value.summary["totals"]["triplets"] > 0


def test_every_error_is_a_tripmine_error():
    for kind in (tripmine.ConfigError, tripmine.DataError, tripmine.RunError, tripmine.QualityGateError):
        assert issubclass(kind, tripmine.TripmineError)
        assert kind.__module__ == "tripmine"


def test_mismatched_arrays_are_refused(table):
    with pytest.raises(tripmine.DataError, match=r"label: 10 values for 3000 embeddings"):
        tripmine.mine(embeddings=np.zeros((3000, 4), np.float32), labels=np.zeros(10, np.int64))
    with pytest.raises(TypeError, match=r"source: expected a path"):
        tripmine.mine(42)
    with pytest.raises(tripmine.ConfigError, match=r"set_threads"):
        tripmine.set_threads(0)
