#!/usr/bin/env bash
# The main job on its built-in default (placeholder until training lands): every model's
# figures on both backends.
set -euo pipefail
cd "$(dirname "$0")/.."
for m in $(.venv/bin/python -c "import sknet; print(' '.join(sknet.list_models()))"); do
    .venv/bin/sknet info "$m" --backend torch | head -2
done
