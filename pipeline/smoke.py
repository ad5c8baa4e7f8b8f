"""`mebot smoke`: the installed models work on this machine — load the bundled GGUF through llama.cpp, generate a
few tokens, embed one sentence. `make setup` ends with it; `mebot smoke` runs it in a child process so that a
death (SIGILL from a llama.cpp build with instructions this CPU refuses) is named, with the rebuild command."""

from __future__ import annotations

import sys
import time

from mebot.resources.settings import load_settings


def check_models(config) -> list[str]:
    """Generate and embed once with the configured local models; returns what was done, one line each."""
    from mebot.resources.chat import chat_client
    from mebot.resources.embeddings import build_embedder

    settings = load_settings(config)
    lines = []
    started = time.perf_counter()
    # no cache and no budget: the point is to run the model on this machine
    chat = chat_client(settings.models.chat)
    reply = chat.complete([{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
    lines.append(f"chat {settings.models.chat.model}: {reply.text.strip()!r} ({time.perf_counter() - started:.1f}s)")
    started = time.perf_counter()
    vector = build_embedder(settings.models.embedding).embed(["mebot checks that embeddings run."])[0]
    lines.append(
        f"embedding {settings.models.embedding.model}: {len(vector)} dims ({time.perf_counter() - started:.1f}s)"
    )
    return lines


def main(argv: list[str]) -> int:
    for line in check_models(argv[0] if argv else None):
        print(f"  {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
