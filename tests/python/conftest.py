"""Shared fixtures: hard tables made here, and the CLI built by `cargo build --release`."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


def overlapping_table(rows: int = 3000, dim: int = 16, labels: int = 30, seed: int = 0) -> pa.Table:
    """Classes whose centres sit within the spread of their members (mean d(a,p) near d(a,n))."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, labels, rows)
    centres = rng.normal(0.0, 0.6, (labels, dim)).astype(np.float32)
    vectors = (centres[label] + rng.normal(0.0, 1.0, (rows, dim))).astype(np.float32)
    return pa.table(
        {
            "id": pa.array([f"r{i}" for i in range(rows)]),
            "label": pa.array(label.astype(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )


@pytest.fixture(scope="session")
def cli() -> Path:
    binary = Path(os.environ.get("TRIPMINE_BIN", ROOT / "target" / "release" / "tripmine"))
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, check=True)
    return binary


@pytest.fixture(scope="session")
def table() -> pa.Table:
    return overlapping_table()


@pytest.fixture()
def table_file(tmp_path: Path, table: pa.Table) -> Path:
    path = tmp_path / "table.parquet"
    pq.write_table(table, path)
    return path
