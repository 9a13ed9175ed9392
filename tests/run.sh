#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary on
# loopback), then the real nacos-sdk-python client against the binary.
# Installs what it needs (a Python venv in .venv) on first run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --locked --workspace
cargo test --locked --workspace
DR_BIN="$PWD/target/debug/distro-registry" .venv/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/python
