#!/usr/bin/env bash
# Installs everything vkq needs on a Debian/Ubuntu machine, then the package itself (with its
# test extras) and its compiled shaders. Safe to run again; uses sudo when not root.
#   system: mesa-vulkan-drivers (lavapipe), libvulkan1 (loader), glslc, spirv-tools,
#           vulkan-validationlayers (VKQ_VALIDATION=1), vulkan-tools (vulkaninfo)
#   python: vkq in editable mode + pytest, hypothesis; then `python -m vkq.compile_shaders`
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PACKAGES=(mesa-vulkan-drivers libvulkan1 glslc spirv-tools vulkan-validationlayers vulkan-tools)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
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

echo "setup: installing the vkq Python package (editable, with test extras)"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
"$PYTHON" -m vkq.compile_shaders
