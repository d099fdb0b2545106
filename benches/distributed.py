"""E1 on one machine against the same job cut into segments: `tripmine mine`, then
`tripmine plan` + `mine-segment` (one after the other) + `finish`, then `tripmine.ray.mine` on a
local Ray cluster of two one-CPU nodes. Prints each run's wall time and peak RSS, the medians,
and checks that every run wrote the same triplets.

    target/py/bin/python benches/distributed.py [--runs 3] [--segment-anchors 16384]

Needs `cargo build --release`, the Python package installed in target/py
(`scripts/test-python.sh` does both) and ray. The table (E1: `tripmine gen --rows 100000
--dim 128 --labels 1000`) is made in target/bench-data when missing.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "target" / "release" / "tripmine"


PEAKS = {}


def timed(args, step=None):
    """Runs a command; its wall seconds. Its peak RSS (MiB, by /usr/bin/time) is kept as the
    highest of `step`."""
    t = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-f", "%M"] + [str(a) for a in args],
                          check=True, capture_output=True, text=True)
    wall = time.monotonic() - t
    if step:
        peak = int(done.stderr.strip().splitlines()[-1]) / 1024
        PEAKS[step] = max(PEAKS.get(step, 0), peak)
    return wall


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--segment-anchors", type=int, default=16384)
    a = p.parse_args()
    data = ROOT / "target" / "bench-data"
    data.mkdir(parents=True, exist_ok=True)
    e1 = data / "e1.parquet"
    if not e1.exists():
        timed([CLI, "gen", "--rows", "100000", "--dim", "128", "--labels", "1000", "--out", e1])
    tmp = Path(tempfile.mkdtemp(prefix="tripmine-bench-"))
    walls = {"mine": [], "plan+segments+finish": [], "ray (2 nodes x 1 CPU)": []}
    steps = {"plan": [], "segments": [], "finish": []}
    outs = []
    for run in range(a.runs):
        out = tmp / f"single-{run}.parquet"
        walls["mine"].append(
            timed([CLI, "mine", "--no-progress", "--in", e1, "--out", out,
                   "--report", tmp / "r.parquet", "--force"], "mine")
        )
        outs.append(out)
        work = tmp / f"work-{run}"
        out = tmp / f"steps-{run}.parquet"
        t_plan = timed([CLI, "plan", "--no-progress", "--work", work, "--segment-anchors",
                        a.segment_anchors, "--in", e1, "--out", out, "--report", tmp / "r2.parquet"], "plan")
        segments = json.loads((work / "plan.json").read_text())["segments"]
        t_seg = sum(
            timed([CLI, "mine-segment", "--work", work, "--segment", s], "segments")
            for s in range(segments)
        )
        t_fin = timed([CLI, "finish", "--work", work], "finish")
        steps["plan"].append(t_plan)
        steps["segments"].append(t_seg)
        steps["finish"].append(t_fin)
        walls["plan+segments+finish"].append(t_plan + t_seg + t_fin)
        outs.append(out)

    import ray
    from ray.cluster_utils import Cluster

    import tripmine.ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    for run in range(a.runs):
        out = tmp / f"ray-{run}.parquet"
        t = time.monotonic()
        tripmine.ray.mine(e1, out=out, report=tmp / "r3.parquet", work_dir=tmp / f"rw-{run}",
                          segment_anchors=a.segment_anchors)
        walls["ray (2 nodes x 1 CPU)"].append(time.monotonic() - t)
        outs.append(out)
    ray.shutdown()
    cluster.shutdown()

    first = outs[0].read_bytes()
    same = all(o.read_bytes() == first for o in outs)
    shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(walls["mine"])
    print(f"E1 (100,000 x 128, 1,000 labels, default strategy), {a.runs} runs, "
          f"segments of {a.segment_anchors} anchors")
    for name, ws in walls.items():
        m = statistics.median(ws)
        print(f"  {name:24s} median {m:6.2f} s ({m / base:.2f}x mine)   runs "
              + ", ".join(f"{w:.2f}" for w in ws))
    for name, ws in steps.items():
        print(f"    {name:22s} median {statistics.median(ws):6.2f} s")
    print("  peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in PEAKS.items()))
    print(f"  triplet files identical across all runs: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
