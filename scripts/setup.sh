#!/usr/bin/env bash
# Set up a virtual environment in .venv with floatzip and everything its
# tests, demo and benchmarks use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch first, pinned: this CPU build lies on the build machines' disk; any
# other spec would pull a multi-GB CUDA build from the registry.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test,torch,gpu,bench]"
