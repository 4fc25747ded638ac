"""Other protocols over the same pipeline: OpenAI-compatible chat completions and MCP."""
