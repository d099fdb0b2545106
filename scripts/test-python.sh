#!/usr/bin/env bash
# Builds and installs the Python package (`pip install .`) into target/py, the virtual
# environment `scripts/setup-debian.sh --tests` makes, and runs its tests (tests/python).
# Run after `cargo test --release`: the tests compare with the CLI in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py
# A wheel repair (scripts/build-wheel.sh) stopped before its cleanup leaves cargo's library
# patched to load bundled copies of its libraries, which `pip install .` does not bundle.
if readelf -d target/release/libtripmine.so 2>/dev/null | grep -q 'tripmine.libs'; then
  rm -f target/release/libtripmine.so target/release/deps/libtripmine.so
fi
"$venv/bin/pip" install -q --disable-pip-version-check .
"$venv/bin/python" -m pytest -q tests/python "$@"
