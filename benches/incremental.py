"""Incremental mining on a grown table against a full re-mine, in one session: a table of
ROWS rows mined with `--state`, then a new partition of NEW rows mined incrementally, then all
ROWS + NEW rows mined again without a state. Prints both wall times, their ratio, peak RSS,
the old anchors mined again, and checks that the two runs wrote the same triplets and report.

    target/py/bin/python benches/incremental.py [--rows 1000000] [--new 10000] \
        [--shape overlapping|clustered|retrieval|both] [--dim 128] [--labels 10000] \
        [--queries 10000] [--mine-args "--index auto --negatives hardest"]

`--mine-args` adds options to every run. With an approximate index (`auto` choosing one, or
IVF/HNSW/PQ) the state keeps the index and the incremental run adds the new rows to it; a
full re-mine trains its own, so the outputs are not compared byte for byte: the recall of
mined negatives that each run measured on its sample is printed instead.

`retrieval` is retrieval mode: a corpus of ROWS documents (`tripmine gen --retrieval`, LABELS
topics) and QUERIES queries, the corpus growing by NEW documents under the same queries and
qrels (cut to the base's documents).

Needs `cargo build --release` and pyarrow (target/py has it after `scripts/test-python.sh`).
Tables are made in target/bench-data when missing (`tripmine gen`; overlapping: separation
0.3, clustered: separation 3.0 and intrinsic dimension 16), cut into the base and the new
partition with pyarrow.
"""

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "target" / "release" / "tripmine"
DATA = ROOT / "target" / "bench-data"

SHAPES = {
    "overlapping": ["--separation", "0.3"],
    "clustered": ["--separation", "3.0", "--intrinsic-dim", "16"],
}


def run(args, cwd):
    """Runs `tripmine ARGS` in `cwd`: (wall seconds, peak RSS MiB)."""
    t = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", str(CLI)] + [str(a) for a in args],
                          cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.monotonic() - t
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024


def retrieval_inputs(rows, new, dim, labels, queries):
    """The input flags of the base and of the grown corpus of one retrieval example."""
    import pyarrow.compute as pc

    name = f"inc-retrieval-{rows}-{new}-{dim}-{labels}-{queries}"
    folder = DATA / name
    base, grown = folder / "corpus-base.parquet", folder / "corpus-new.parquet"
    qrels = folder / "qrels-base.parquet"
    if not (base.exists() and grown.exists() and qrels.exists()):
        DATA.mkdir(parents=True, exist_ok=True)
        subprocess.run([CLI, "gen", "--retrieval", "--rows", str(rows + new), "--dim", str(dim),
                        "--labels", str(labels), "--queries", str(queries), "--seed", "42",
                        "--out", folder], check=True, capture_output=True)
        corpus = pq.read_table(folder / "corpus.parquet")
        pq.write_table(corpus.slice(0, rows), base)
        pq.write_table(corpus.slice(rows, new), grown)
        known = pq.read_table(folder / "qrels.parquet")
        keep = pc.is_in(known["doc_id"], value_set=corpus.slice(0, rows)["id"])
        pq.write_table(known.filter(keep), qrels)
        (folder / "corpus.parquet").unlink()
    fixed = ["--queries", folder / "queries.parquet", "--qrels", qrels]
    return fixed + ["--corpus", base], fixed + ["--corpus", base, "--corpus", grown]


def inputs(shape, rows, new, dim, labels, queries):
    """The input flags of the base and of the grown table."""
    if shape == "retrieval":
        return retrieval_inputs(rows, new, dim, labels, queries)
    base, grown = partitions(shape, rows, new, dim, labels)
    return ["--in", base], ["--in", base, "--in", grown]


def partitions(shape, rows, new, dim, labels):
    """The base and new partition files of one generated table."""
    name = f"inc-{shape}-{rows}-{new}-{dim}-{labels}"
    base, grown = DATA / f"{name}-base.parquet", DATA / f"{name}-new.parquet"
    if not (base.exists() and grown.exists()):
        DATA.mkdir(parents=True, exist_ok=True)
        whole = DATA / f"{name}.parquet"
        subprocess.run([CLI, "gen", "--rows", str(rows + new), "--dim", str(dim), "--labels",
                        str(labels), "--seed", "42", "--out", whole] + SHAPES[shape], check=True,
                       capture_output=True)
        table = pq.read_table(whole)
        pq.write_table(table.slice(0, rows), base)
        pq.write_table(table.slice(rows, new), grown)
        whole.unlink()
    return base, grown


def bench(shape, rows, new, dim, labels, queries, extra):
    base, grown = inputs(shape, rows, new, dim, labels, queries)
    work = Path(tempfile.mkdtemp(prefix="tripmine-inc-"))
    try:
        inc, full = work / "incremental", work / "full"
        inc.mkdir()
        full.mkdir()
        common = ["mine", "--no-progress", "--out", "o.parquet", "--report", "r.parquet",
                  "--summary-json", "s.json"] + extra
        state = ["--state", work / "state"]
        first, first_peak = run(common + base + state, inc)
        shutil.copytree(work / "state", work / "state-delta")
        wall_inc, peak_inc = run(common + grown + state, inc)
        # The same incremental run, also writing the delta.
        with_delta = work / "with-delta"
        with_delta.mkdir()
        wall_delta, _ = run(common + grown + ["--state", work / "state-delta", "--delta",
                                              "d.parquet"], with_delta)
        delta = json.loads((with_delta / "s.json").read_text())["changes"]
        wall_full, peak_full = run(common + grown, full)
        summary_inc = json.loads((inc / "s.json").read_text())
        summary_full = json.loads((full / "s.json").read_text())
        changes = summary_inc["changes"]
        exact = summary_inc["exact"] and summary_full["exact"]
        same = all((inc / f).read_bytes() == (full / f).read_bytes()
                   for f in ["o.parquet", "r.parquet"])
        same = same and (with_delta / "o.parquet").read_bytes() == (full / "o.parquet").read_bytes()
        anchors = queries if shape == "retrieval" else rows
        what = f"{queries:,} queries, " if shape == "retrieval" else ""
        print(f"{shape}: {rows:,} rows + {new:,} new, dim {dim}, {what}{labels:,} labels")
        print(f"  first run with --state   {first:8.1f} s  peak {first_peak:7.1f} MiB")
        print(f"  incremental              {wall_inc:8.1f} s  peak {peak_inc:7.1f} MiB  "
              f"({changes['mode']}, {changes['anchors_mined_again']:,} old anchors mined again, "
              f"{changes['anchors_mined_again'] / anchors:.1%})")
        print(f"  incremental with --delta {wall_delta:8.1f} s  "
              f"({delta['delta_rows_added']:,} rows added, {delta['delta_rows_removed']:,} removed)")
        print(f"  full re-mine             {wall_full:8.1f} s  peak {peak_full:7.1f} MiB")
        if exact:
            print(f"  incremental / full       {wall_inc / wall_full:8.3f}   outputs identical: "
                  f"{same}")
            return same

        def recall(summary):
            t = summary["totals"]
            return (f"{t['recall_negatives']:.3f} ({t['recall_negatives_lo']:.3f} to "
                    f"{t['recall_negatives_hi']:.3f}), index {summary['index']}")
        print(f"  incremental / full       {wall_inc / wall_full:8.3f}   (approximate: recall "
              "of mined negatives on each run's sample)")
        print(f"  recall, incremental      {recall(summary_inc)}")
        print(f"  recall, full re-mine     {recall(summary_full)}")
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--new", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--labels", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--shape", choices=["overlapping", "clustered", "retrieval", "both"],
                   default="both")
    p.add_argument("--mine-args", default="", help="options added to every run")
    a = p.parse_args()
    shapes = list(SHAPES) if a.shape == "both" else [a.shape]
    ok = [bench(s, a.rows, a.new, a.dim, a.labels, a.queries, a.mine_args.split())
          for s in shapes]
    raise SystemExit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
