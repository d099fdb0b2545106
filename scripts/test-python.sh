#!/usr/bin/env bash
# Builds and installs the Python package (`pip install .`) into target/py, the virtual
# environment `scripts/setup-debian.sh --tests` makes, and runs its tests (tests/python).
# Run after `cargo test --release`: the tests compare with the CLI in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py
"$venv/bin/pip" install -q --disable-pip-version-check .
"$venv/bin/python" -m pytest -q tests/python "$@"
