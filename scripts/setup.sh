#!/usr/bin/env bash
# Creates .venv and installs glowtorch with its test tools and the demo's Gradio. Safe to run again.
# The browser tests drive Debian's chromium (apt-get install chromium); .ci/run installs it.
# torch==2.13.0 first: it is the CPU build; a bare "torch" requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,demo]"
