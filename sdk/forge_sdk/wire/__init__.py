"""OpenAI wire types in full: chat and text completion requests (every field of the current API
plus vLLM's sampling extensions) and the responses with log-probs and tool calls.

:mod:`forge_sdk.types` re-exports them; import from there.
"""
