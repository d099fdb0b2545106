"""The search alone, in plain FAISS: what an approximate run cannot go below.

Builds the IVF-PQ index `tripmine mine --index auto` builds (the same factory string and
training sample size), then times FAISS's own search of a random subset of the table's rows at
the given nprobe and k, on every core FAISS uses, and projects it to every row. tripmine does
this search and more (exact rescoring of each candidate, positives, scoring, writing), so the
projection is a floor for its mining at that setting.

    python3 -m venv /tmp/fvenv && /tmp/fvenv/bin/pip install faiss-cpu pyarrow numpy
    /tmp/fvenv/bin/python benches/faiss_search.py e3.parquet --factory IVF8192,PQ32x4fs \
        --train 100000 --queries 200000 --nprobe 64 128 --k 128

It holds the whole table in memory (no `--memory-limit`): the figure is the search's own
cost, not that of a bounded run.
"""

import argparse
import time

import faiss
import numpy as np
import pyarrow.parquet as pq


def read_vectors(path, column="embedding"):
    """The table's vector column as one contiguous `rows x dim` float32 array."""
    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    dim = col.type.list_size
    return np.ascontiguousarray(
        col.values.to_numpy(zero_copy_only=False).reshape(-1, dim), dtype=np.float32
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("--column", default="embedding")
    ap.add_argument("--factory", default="IVF8192,PQ32x4fs")
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--k", type=int, nargs="+", default=[128])
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()

    t = time.perf_counter()
    x = read_vectors(a.table, a.column)
    n, dim = x.shape
    print(f"read {n} x {dim} in {time.perf_counter() - t:.1f} s; {faiss.omp_get_max_threads()} threads")

    rng = np.random.default_rng(a.seed)
    index = faiss.index_factory(dim, a.factory)
    t = time.perf_counter()
    index.train(x[rng.choice(n, min(a.train, n), replace=False)])
    index.add(x)
    print(f"{a.factory}: trained on {min(a.train, n)} rows and added all in {time.perf_counter() - t:.1f} s")

    q = x[np.sort(rng.choice(n, min(a.queries, n), replace=False))]
    ivf = faiss.extract_index_ivf(index)
    for nprobe in a.nprobe:
        for k in a.k:
            ivf.nprobe = nprobe
            t = time.perf_counter()
            index.search(q, k)
            s = time.perf_counter() - t
            print(
                f"nprobe {nprobe}, k {k}: {len(q)} queries in {s:.1f} s; "
                f"all {n} rows projected: {s * n / len(q):.0f} s"
            )


if __name__ == "__main__":
    main()
