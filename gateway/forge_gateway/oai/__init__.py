"""The OpenAI API's request semantics on local engines: sampling options and constraints,
messages and tools into the chat template, tool calls out of the output, log-prob shapes.

The routes in :mod:`forge_gateway.api.openai` glue these together; remote experts never come
here (their requests are proxied unchanged).
"""
