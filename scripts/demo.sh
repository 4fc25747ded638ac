#!/usr/bin/env bash
# Install dspy-serve and the embedded local model (not the test toolchain), then serve the
# question-answering demo on it. The model runs on xllamacpp's prebuilt wheel; pass
# --with-llama-cpp to build the fallback runtime too (done by itself on a CPU that needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh runtime "$@"
HOST=${DSPY_SERVE_HOST:-127.0.0.1}
PORT=${DSPY_SERVE_PORT:-8000}
cat >&2 <<MSG

  Try it:
    curl -s http://$HOST:$PORT/qa/invoke -H 'Content-Type: application/json' \\
         -d '{"inputs": {"question": "What is the capital of France?"}}'
  API docs: http://$HOST:$PORT/docs
  Try it in the browser (the playground): http://$HOST:$PORT/playground/qa

  Then serve your own program from this checkout's environment:
    source .venv/bin/activate     # or call .venv/bin/dspy-serve directly
    dspy-serve run path/to/your_program.py:NAME --model openai/gpt-4o-mini

MSG
exec .venv/bin/dspy-serve run qa=examples/qa.py:program --artifact examples/qa.json --host "$HOST" --port "$PORT"
