"""Would an IVF block join beat FAISS's search for hardest negatives? (A probe, not tripmine.)

The idea: compare each IVF list's anchors exactly, in one sgemm, with the rows of the P lists
whose centroids lie nearest the list's own centroid, instead of searching anchor by anchor.
This measures the recall of the hardest negative on a sample of anchors (against brute force
over the whole table) with the list's P lists and, for comparison, with each anchor's own P
nearest lists (IVF-Flat's probes), and times the join (numpy, OpenBLAS) on a sample of lists,
projected to all lists.

    /tmp/fvenv/bin/python benches/ivf_join_probe.py e3.parquet 8192

(the environment of `benches/faiss_search.py`).
"""
import sys
import time

import faiss
import numpy as np
import pyarrow.parquet as pq

from faiss_search import read_vectors

path = sys.argv[1]
nlist = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
t = time.perf_counter()
x = read_vectors(path)
lab = pq.read_table(path, columns=["label"]).column("label").to_numpy()
n, dim = x.shape
print(f"read {n} x {dim} in {time.perf_counter()-t:.1f} s", flush=True)
rng = np.random.default_rng(42)

t = time.perf_counter()
km = faiss.Kmeans(dim, nlist, niter=10, seed=1)
km.train(x[rng.choice(n, 100_000, replace=False)])
cent = km.centroids
q = faiss.IndexFlatL2(dim)
q.add(cent)
_, assign = q.search(x, 1)
assign = assign[:, 0]
print(f"k-means and assignment {time.perf_counter()-t:.1f} s", flush=True)
order = np.argsort(assign, kind="stable")
bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
xs = x[order]
ls = lab[order]
norms = (xs * xs).sum(1)
Pmax = 64
_, near_lists = q.search(cent, Pmax)  # nearest centroids of each centroid (itself first)

# Exact hardest negative of sampled anchors.
S = 300
samp = rng.choice(n, S, replace=False)
t = time.perf_counter()
best = np.full(S, np.inf)
for lo in range(0, n, 500_000):
    blk = x[lo:lo + 500_000]
    d = (x[samp] ** 2).sum(1)[:, None] + (blk ** 2).sum(1)[None, :] - 2 * x[samp] @ blk.T
    d[lab[samp][:, None] == lab[lo:lo + 500_000][None, :]] = np.inf
    best = np.minimum(best, d.min(1))
print(f"brute force for {S} anchors {time.perf_counter()-t:.1f} s", flush=True)

_, aprobe = q.search(x[samp], Pmax)
for P in (4, 8, 16, 32, 64):
    hit_list = hit_anchor = 0
    for i, a in enumerate(samp):
        for mode in ("list", "anchor"):
            lists = near_lists[assign[a], :P] if mode == "list" else aprobe[i, :P]
            rows = np.concatenate([np.arange(bounds[l], bounds[l + 1]) for l in lists])
            d = ((xs[rows] - x[a]) ** 2).sum(1)
            d[ls[rows] == lab[a]] = np.inf
            ok = d.min() <= best[i] * (1 + 1e-5) + 1e-6
            if mode == "list":
                hit_list += ok
            else:
                hit_anchor += ok
    print(f"P {P}: recall of the hardest negative, probes of the list {hit_list/S:.3f}, of the anchor {hit_anchor/S:.3f}", flush=True)

# Time of the join (sgemm + nearest non-label per anchor) on a sample of lists.
for P in (8, 16, 32):
    L = rng.choice(nlist, 128, replace=False)
    t = time.perf_counter()
    for l in L:
        a = slice(bounds[l], bounds[l + 1])
        rows = np.concatenate([np.arange(bounds[m], bounds[m + 1]) for m in near_lists[l, :P]])
        d = norms[rows][None, :] - 2 * (xs[a] @ xs[rows].T)
        d[ls[a][:, None] == ls[rows][None, :]] = np.inf
        d.min(1)
    s = time.perf_counter() - t
    print(f"P {P}: join of 128 lists {s:.2f} s, all {nlist} projected {s*nlist/128:.0f} s", flush=True)
