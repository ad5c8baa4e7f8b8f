"""mebot's wiring: settings, definitions, jobs, the `mebot` command and the HTTP server."""

from pipeline.tokens import ensure_offline_tiktoken

# Any process that imports the project can count tokens offline, including plain tiktoken calls made by
# libraries (langchain's tiktoken splitter).
ensure_offline_tiktoken()
