#!/usr/bin/env bash
# Set up a fresh machine: Debian's Fashion-MNIST, a virtual environment in .venv with
# PyTorch (CPU), MindSpore, ONNX Runtime and this package in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# libjpeg-dev (libjpeg-turbo's headers) builds sknet.data._jpeg, the region decoder of the
# input pipeline; without it the pipeline decodes through PIL (same pixels, slower).
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/include/jpeglib.h ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist libjpeg-dev
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch pinned to the CPU build for machines without a GPU (an unpinned torch pulls CUDA
# wheels of several GB); on a CUDA cluster install your torch first and drop the pin.
# MindSpore 2.x is built against NumPy 1.x.
.venv/bin/pip install -q ${SKNET_TORCH_PIN:-torch==2.13.0} "numpy<2"
.venv/bin/pip install -q -e ".[all,test]" "numpy<2"
.venv/bin/pip install -q --no-deps foolbox==3.3.4
# The editable install leaves C extensions to an in-place build (optional: it may fail).
.venv/bin/python setup.py -q build_ext --inplace 2>/dev/null || true
.venv/bin/python -c "from sknet.data import folder; print('input pipeline JPEG decode:', 'libjpeg-turbo region (sknet.data._jpeg)' if folder._jpeg else 'PIL (sknet.data._jpeg not built)')"
.venv/bin/python -c "import sknet, torch, mindspore, onnx, onnxruntime; print('sknet', sknet.__version__, '| torch', torch.__version__, '| mindspore', mindspore.__version__, '| onnxruntime', onnxruntime.__version__)"
