#!/usr/bin/env bash
# Install everything, then serve the question-answering demo on the embedded local model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
HOST=${DSPY_SERVE_HOST:-127.0.0.1}
PORT=${DSPY_SERVE_PORT:-8000}
cat >&2 <<MSG

  Try it:
    curl -s http://$HOST:$PORT/qa/invoke -H 'Content-Type: application/json' \\
         -d '{"inputs": {"question": "What is the capital of France?"}}'
  API docs: http://$HOST:$PORT/docs

MSG
exec .venv/bin/dspy-serve run qa=examples/qa.py:program --artifact examples/qa.json --host "$HOST" --port "$PORT"
