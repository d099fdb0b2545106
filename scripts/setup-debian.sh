#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build tripmine: cmake and a C++ compiler for
# the FAISS that the `faiss` crate builds, and OpenBLAS/LAPACK for it to link against.
# With --tests, also Chromium: the tests render the HTML report in a headless browser.
set -euo pipefail

packages=(cmake g++ make libopenblas-dev liblapack-dev pkg-config)
[ "${1:-}" = "--tests" ] && packages+=(chromium)
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
