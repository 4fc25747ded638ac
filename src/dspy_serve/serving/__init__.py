"""The call pipeline: programs, their interfaces, and the one path every call takes.

No web framework is imported here: HTTP, OpenAI-compatible and MCP front ends all drive it.
"""
