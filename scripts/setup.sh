#!/usr/bin/env bash
# Install what git-theta and its tests need on a fresh Debian/Ubuntu machine:
# git-lfs (from the distribution) when it is missing, then this package with its
# test dependencies (torch pinned to 2.13.0, the CPU build). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! git lfs version >/dev/null 2>&1; then
  echo "setup: installing git-lfs" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq git-lfs >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 \
  | grep -v "Running pip as the 'root' user" >&2 || true
python3 -c "import git_theta, torch, tensorstore" \
  || { echo "setup: installing git-theta failed" >&2; exit 1; }
