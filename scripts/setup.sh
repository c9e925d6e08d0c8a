#!/usr/bin/env bash
# Sets up jaxlenet on a fresh machine: Debian's Fashion-MNIST package (when apt is there and we may
# use it; otherwise the files are downloaded on first use), a virtualenv in .venv, the project
# with its test extras, and its C++ CPU kernels (built now rather than on first use; where they
# cannot be built, jaxlenet runs without them). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="-"; fi
  if [ "$SUDO" != "-" ]; then
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; jaxlenet will download the files" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -c "from jaxlenet.fast import kernels; kernels.build()" \
  || echo "setup: jaxlenet's CPU kernels did not build; it will run XLA's slower formulation" >&2
