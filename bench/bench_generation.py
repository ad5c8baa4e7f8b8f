"""Generation speed through ChatClient (cache off) against a bare `llama_cpp.Llama.create_chat_completion`.

Both paths load the same GGUF with the same n_ctx and threads, start every call from an empty KV cache (the
client resets it so that an answer never depends on the previous call; the bare path is reset the same way) and
answer the same prompt greedily. Runs alternate between the two paths to share any drift in machine load.

Figures per path, as median (min–max) over the repetitions:
- generation tokens/s: completion tokens / (wall time of the call − llama.cpp's prompt-evaluation time), so
  everything the client adds (chat template, bookkeeping, locks) counts against it;
- llama.cpp's own decode tokens/s (its counters; no Python around it), for reference;
- prompt-processing tokens/s: llama.cpp's own counters (prompt tokens / prompt-evaluation time);
- wall time per call.
Target: client generation tokens/s ≥ 0.9 × bare.

    .venv/bin/python bench/bench_generation.py [--reps 7] [--max-tokens 128] [--threads 0] [--n-ctx 2048]

The machine must be otherwise idle: with every core in use by llama.cpp, one busy process elsewhere slows
generation down by two orders of magnitude (llama.cpp's threads wait for each other at every step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp  # noqa: E402

from pipeline.settings import ChatModelSettings  # noqa: E402
from resources import chat as chat_module  # noqa: E402
from resources.chat import ChatClient, bundled_gguf_path  # noqa: E402

PROMPT = (
    "You are Tobias Renwick, a data engineer who writes about pipelines, orchestration and home-made tools. "
    "A reader has sent you a long letter. They run a small team that moves sales data from a dozen shops into "
    "a warehouse every night. Their jobs are cron scripts that call each other; when one fails, nobody notices "
    "until the morning report is empty. They ask how you would restructure this: which tool you would pick, how "
    "you would make failures visible, how you would test the transformations, and how you would let the "
    "analysts rerun one day's data without rerunning everything. Write them a detailed, friendly answer with "
    "concrete steps, in several paragraphs."
)
MESSAGES = [{"role": "user", "content": PROMPT}]


def perf(llm: llama_cpp.Llama) -> tuple[float, int, float, int]:
    """(prompt eval s, prompt tokens evaluated, generation eval s, tokens generated) since the last reset."""
    data = llama_cpp.llama_perf_context(llm.ctx)
    return data.t_p_eval_ms / 1000, data.n_p_eval, data.t_eval_ms / 1000, data.n_eval


def timed(llm: llama_cpp.Llama, call: Callable[[], int]) -> dict[str, float]:
    llama_cpp.llama_perf_context_reset(llm.ctx)
    started = time.perf_counter()
    completion_tokens = call()
    wall = time.perf_counter() - started
    p_eval_s, n_p_eval, eval_s, n_eval = perf(llm)
    return {
        "wall_s": wall,
        "completion_tokens": completion_tokens,
        "gen_tps": completion_tokens / max(wall - p_eval_s, 1e-9),
        "pp_tps": n_p_eval / max(p_eval_s, 1e-9),
        "eval_tps": n_eval / max(eval_s, 1e-9),
    }


def summary(values: list[float], unit: str, digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="0: every core, as models.chat.n_threads: 0")
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()

    gguf = bundled_gguf_path()
    settings = ChatModelSettings(provider="llama_cpp", n_ctx=args.n_ctx, n_threads=args.threads)
    client = ChatClient(settings, prices={}, cache=None, budget_usd=None)
    threads = client.n_threads
    raw = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=args.n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def raw_call() -> int:
        raw.reset()  # the client starts each call from an empty KV cache; so does this
        response = raw.create_chat_completion(messages=MESSAGES, temperature=0.0, max_tokens=args.max_tokens)
        return response["usage"]["completion_tokens"]

    def client_call() -> int:
        return client.complete(MESSAGES, temperature=0.0, max_tokens=args.max_tokens).completion_tokens

    # Warm-up: loads the client's model, touches the weights for both.
    raw.reset()
    prompt_tokens = raw.create_chat_completion(messages=MESSAGES, max_tokens=1)["usage"]["prompt_tokens"]
    client_call()
    client_llm = chat_module._llama(
        gguf, lora_path=None, n_ctx=args.n_ctx, n_threads=threads, logits_all=False
    ).llm

    print(f"model: {gguf.name}  n_ctx={args.n_ctx}  threads={threads} of {os.cpu_count()} cores  "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"prompt: {prompt_tokens} tokens (chat template included), max_tokens={args.max_tokens}, "
          f"{args.reps} repetitions, alternating\n")

    runs: dict[str, list[dict[str, float]]] = {"bare llama_cpp": [], "ChatClient": []}
    for _ in range(args.reps):
        runs["bare llama_cpp"].append(timed(raw, raw_call))
        runs["ChatClient"].append(timed(client_llm, client_call))

    for name, results in runs.items():
        print(f"{name:>15}: generation {summary([r['gen_tps'] for r in results], 'tok/s')}, "
              f"(llama.cpp decode alone {summary([r['eval_tps'] for r in results], 'tok/s')}), "
              f"prompt processing {summary([r['pp_tps'] for r in results], 'tok/s')}, "
              f"wall {summary([r['wall_s'] for r in results], 's', 3)}, "
              f"completion tokens {summary([r['completion_tokens'] for r in results], 'tokens', 0)}")
    ratio = statistics.median(r["gen_tps"] for r in runs["ChatClient"]) / statistics.median(
        r["gen_tps"] for r in runs["bare llama_cpp"]
    )
    verdict = "meets" if ratio >= 0.9 else "MISSES"
    print(f"\nChatClient / bare generation tokens/s: {ratio:.3f} ({verdict} the 0.9 target)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
