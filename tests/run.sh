#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary on
# loopback), then the real nacos-sdk-python clients against the binary:
# 1.0.0 (HTTP, in .venv) and 3.2.0 (gRPC, package v2, in .venv-v2), the
# Rust nacos-sdk 0.8.3 (tests/rust_v2, run from the v2 suite), and the npm
# nacos 2.6.3 client (tests/node, run from the 1.x suite's auth tests).
# Installs what it needs on first run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# The 2.x client (gRPC) has the same PyPI name as the 1.x one: its own venv.
if [ ! -x .venv-v2/bin/python ]; then
    python3 -m venv .venv-v2
fi
.venv-v2/bin/pip install --quiet --disable-pip-version-check -r tests/python_v2/requirements.txt

# The npm client, from its lockfile.
if [ ! -d tests/node/node_modules/nacos ]; then
    npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi

cargo build --locked --workspace
# The Rust 2.x client (nacos-sdk 0.8.3) in a program of its own, outside
# the workspace, with its own lockfile (the first build takes minutes).
cargo build --locked --manifest-path tests/rust_v2/Cargo.toml
cargo test --locked --workspace
DR_BIN="$PWD/target/debug/distro-registry" .venv/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/python
DR_BIN="$PWD/target/debug/distro-registry" NACOS_RS_CHECK="$PWD/tests/rust_v2/target/debug/nacos-rust-v2-check" \
    .venv-v2/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/python_v2
