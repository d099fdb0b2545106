#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build tripmine: cmake and a C++ compiler for
# the FAISS that the `faiss` crate builds, and OpenBLAS/LAPACK for it to link against.
# With --tests, also Chromium (the tests render the HTML report in a headless browser) and a
# Python virtual environment in target/py with Hugging Face `datasets` (a test runs the
# README's Python snippet on tripmine's output), polars, pytest and ray (the Python package's
# tests, scripts/test-python.sh; the Ray tests start a two-node cluster on this machine).
set -euo pipefail

packages=(cmake g++ make libopenblas-dev liblapack-dev pkg-config)
tests=false
[ "${1:-}" = "--tests" ] && tests=true
if $tests; then
  packages+=(chromium)
  # Debian's python3 needs python3-venv for `python3 -m venv`; another python3 may have it.
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    packages+=(python3 python3-venv)
  fi
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || {
  echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
}
if $tests; then
  venv="$(dirname "$0")/../target/py"
  if ! "$venv/bin/python" -c 'import datasets, polars, pytest, ray' 2>/dev/null; then
    echo "creating $venv with datasets, polars, pytest and ray" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'datasets>=2.14' 'polars>=1' 'pytest>=7' 'ray>=2.9'
  fi
fi
