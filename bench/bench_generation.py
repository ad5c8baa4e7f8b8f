"""Generation speed through ChatClient (cache off) against a bare `llama_cpp.Llama.create_chat_completion`,
prompt processing, and a fine-tuned model (base + LoRA adapter) against the base.

Both paths load the same GGUF with the same n_ctx and threads, start every call from an empty KV cache (the
client resets it so that an answer never depends on the previous call; the bare path is reset the same way) and
answer the same prompt greedily. Runs alternate between the paths to share any drift in machine load.

Figures, each the median (min–max) over the repetitions, ratios per repetition:
- generation tokens/s: completion tokens / (wall time of the call − llama.cpp's prompt-evaluation time), so
  everything the client adds (chat template, bookkeeping, locks) counts against it. Target: client ≥ 0.9 × bare;
- llama.cpp's own decode tokens/s (its counters; no Python around it), for reference;
- prompt processing: a long prompt (~500 tokens of the sample site) with max_tokens 1, prompt tokens / wall
  time of the call, client and bare;
- fine-tuned vs base: a LoRA adapter (r and alpha of the default sweep) trained for two steps on sample-site
  examples and exported to GGUF (resources/lora.py, as `finetuned_models` does; the adapter's effect on speed,
  not quality), asked through ChatClient with the adapter vs without. Target (bench_finetune.py's): ≥ 0.8.

    .venv/bin/python bench/bench_generation.py [--reps 5] [--max-tokens 128] [--threads 0] [--n-ctx 2048]
        [--adapter PATH.gguf] [--no-finetuned] [--quick] [--json OUT]

The machine should be otherwise idle: with every core in use by llama.cpp, one busy process elsewhere slows
generation down a lot (llama.cpp's threads wait for each other at every step); the ratios stay meaningful.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, ratios, result, standalone_parser  # noqa: E402
from _corpus import sample_site_pages  # noqa: E402

sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402

from mebot.resources.chat import ChatClient, bundled_gguf_path, chat_client  # noqa: E402
from mebot.resources.settings import ChatModelSettings  # noqa: E402

SECTION = "5. Generation"
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
LONG_PROMPT_WORDS = 350  # ≈ 500 SmolLM2 tokens


def perf(llm: llama_cpp.Llama) -> tuple[float, int, float, int]:
    """(prompt eval s, prompt tokens evaluated, generation eval s, tokens generated) since the last reset."""
    data = llama_cpp.llama_perf_context(llm.ctx)
    return data.t_p_eval_ms / 1000, data.n_p_eval, data.t_eval_ms / 1000, data.n_eval


def timed_call(llm: llama_cpp.Llama, call: Callable[[], tuple[int, int]]) -> dict[str, float]:
    """Runs `call` (returning prompt and completion tokens) and reads llama.cpp's counters of `llm` after it."""
    llama_cpp.llama_perf_context_reset(llm.ctx)
    started = time.perf_counter()
    prompt_tokens, completion_tokens = call()
    wall = time.perf_counter() - started
    p_eval_s, n_p_eval, eval_s, n_eval = perf(llm)
    return {
        "wall_s": wall,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "gen_tps": completion_tokens / max(wall - p_eval_s, 1e-9),
        "pp_wall_tps": prompt_tokens / max(wall, 1e-9),
        "pp_tps": n_p_eval / max(p_eval_s, 1e-9),
        "eval_tps": n_eval / max(eval_s, 1e-9),
    }


def rotated(items: list, round_number: int) -> list:
    """`items` in order for even rounds, in reverse for odd ones (each path is first as often as last)."""
    return items if round_number % 2 == 0 else items[::-1]


def long_prompt_messages() -> list[dict]:
    words = " ".join(sample_site_pages()["text"]).split()[:LONG_PROMPT_WORDS]
    return [{"role": "user", "content": "Summarise these notes in one sentence.\n\n" + " ".join(words)}]


def train_tiny_adapter(folder: Path) -> Path:
    """A LoRA adapter of the default sweep's shape, trained for two steps on sample-site examples, as GGUF."""
    from bench_finetune import site_examples

    from mebot.resources.lora import export_lora_gguf, train_lora
    from mebot.resources.settings import FinetuneSettings, LocalFinetuneSettings, Settings, SweepPoint

    settings = Settings()
    sweep = FinetuneSettings().sweep
    point = SweepPoint(
        n_epochs=1,
        batch_size=2,
        learning_rate_multiplier=1.0,
        lora_r=sweep.lora_r[0],
        lora_alpha=sweep.lora_alpha[0],
    )
    local = LocalFinetuneSettings(max_steps=2, max_seq_tokens=128)
    trained = train_lora(site_examples(settings)[:4], [], point, local, None, None)
    return export_lora_gguf(trained.peft_model, folder / "adapter.gguf")


def run(
    quick: bool = False,
    reps: int = 5,
    max_tokens: int = 128,
    threads: int = 0,
    n_ctx: int = 2048,
    adapter: Path | None = None,
    finetuned: bool = True,
) -> list[Result]:
    reps = 3 if quick else reps
    gguf = bundled_gguf_path()
    settings = ChatModelSettings(provider="llama_cpp", n_ctx=n_ctx, n_threads=threads)
    client = chat_client(settings)  # a LlamaCppChat: n_threads and loaded() are its own
    threads = client.n_threads
    raw = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    long_messages = long_prompt_messages()

    def raw_call(messages: list[dict], tokens: int) -> tuple[int, int]:
        raw.reset()  # the client starts each call from an empty KV cache; so does this
        usage = raw.create_chat_completion(messages=messages, temperature=0.0, max_tokens=tokens)["usage"]
        return usage["prompt_tokens"], usage["completion_tokens"]

    def client_call(messages: list[dict], tokens: int, chat: ChatClient = client) -> tuple[int, int]:
        answer = chat.complete(messages, temperature=0.0, max_tokens=tokens)
        return answer.prompt_tokens, answer.completion_tokens

    # Warm-up: loads the client's model, touches the weights for both.
    prompt_tokens = raw_call(MESSAGES, 1)[0]
    long_tokens = raw_call(long_messages, 1)[0]
    client_call(MESSAGES, 1)
    client_llm = client.loaded().llm  # the same Llama the client calls (bundled GGUF, no adapter)

    gen: dict[str, list[dict[str, float]]] = {"bare": [], "client": []}
    pp: dict[str, list[dict[str, float]]] = {"bare": [], "client": []}
    calls = {
        ("gen", "bare"): lambda: timed_call(raw, lambda: raw_call(MESSAGES, max_tokens)),
        ("gen", "client"): lambda: timed_call(client_llm, lambda: client_call(MESSAGES, max_tokens)),
        ("pp", "bare"): lambda: timed_call(raw, lambda: raw_call(long_messages, 1)),
        ("pp", "client"): lambda: timed_call(client_llm, lambda: client_call(long_messages, 1)),
    }
    for round_number in range(reps):
        # Which path goes first alternates: the same path first every time would take all the drift.
        for kind, path in rotated(list(calls), round_number):
            (gen if kind == "gen" else pp)[path].append(calls[kind, path]())

    def values(runs: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] for r in runs]

    setup = f"{gguf.name}, n_ctx {n_ctx}, {threads} of {os.cpu_count()} cores, greedy"
    out = [
        result(
            SECTION,
            "generation, ChatClient",
            values(gen["client"], "gen_tps"),
            "tokens/s",
            note=f"{setup}; prompt {prompt_tokens} tokens, max_tokens {max_tokens}",
        ),
        result(SECTION, "generation, bare llama_cpp.Llama", values(gen["bare"], "gen_tps"), "tokens/s"),
        result(
            SECTION,
            "generation, ChatClient / bare",
            ratios(values(gen["client"], "gen_tps"), values(gen["bare"], "gen_tps")),
            "ratio",
            target=(">=", 0.9),
        ),
        result(
            SECTION,
            "llama.cpp decode alone (its counters, client's model)",
            values(gen["client"], "eval_tps"),
            "tokens/s",
        ),
        result(
            SECTION,
            "prompt processing, ChatClient",
            values(pp["client"], "pp_wall_tps"),
            "tokens/s",
            note=f"{long_tokens}-token prompt, max_tokens 1, prompt tokens / wall time",
        ),
        result(SECTION, "prompt processing, bare llama_cpp.Llama", values(pp["bare"], "pp_wall_tps"), "tokens/s"),
        result(
            SECTION,
            "prompt processing, ChatClient / bare",
            ratios(values(pp["client"], "pp_wall_tps"), values(pp["bare"], "pp_wall_tps")),
            "ratio",
        ),
    ]
    if finetuned:
        out += finetuned_vs_base(client, client_llm, adapter, settings, reps, max_tokens, client_call)
    return out


def finetuned_vs_base(
    client: ChatClient,
    client_llm: llama_cpp.Llama,
    adapter: Path | None,
    settings: ChatModelSettings,
    reps: int,
    max_tokens: int,
    client_call: Callable[..., tuple[int, int]],
) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        started = time.perf_counter()
        try:
            made = adapter is None
            adapter_path = train_tiny_adapter(Path(tmp)) if made else Path(adapter)
        except Exception as exc:  # noqa: BLE001 - the table says what failed; the other figures stand
            return [failed(SECTION, "fine-tuned (base + LoRA) / base", f"{type(exc).__name__}: {exc}")]
        prepare_s = time.perf_counter() - started
        tuned = chat_client(settings, lora_path=str(adapter_path))
        client_call(MESSAGES, 1, tuned)  # loads the model with the adapter
        tuned_llm = tuned.loaded().llm
        base_runs, tuned_runs = [], []
        for round_number in range(reps):
            for path in rotated(["base", "tuned"], round_number):
                if path == "base":
                    base_runs.append(timed_call(client_llm, lambda: client_call(MESSAGES, max_tokens, client)))
                else:
                    tuned_runs.append(timed_call(tuned_llm, lambda: client_call(MESSAGES, max_tokens, tuned)))
    base_tps = [r["gen_tps"] for r in base_runs]
    tuned_tps = [r["gen_tps"] for r in tuned_runs]
    how = f"trained 2 steps + exported in {prepare_s:.0f} s" if made else f"adapter {adapter_path}"
    return [
        result(SECTION, "fine-tuned (base + LoRA), ChatClient", tuned_tps, "tokens/s", note=how),
        result(
            SECTION,
            "fine-tuned (base + LoRA) / base",
            ratios(tuned_tps, base_tps),
            "ratio",
            target=(">=", 0.8),
            note="target from bench_finetune.py; the issue sets none",
        ),
    ]


def main() -> int:
    parser = standalone_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="0: as models.chat.n_threads: 0 (all cores but one)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--adapter", type=Path, default=None, help="a GGUF LoRA adapter (default: train a tiny one)")
    parser.add_argument("--no-finetuned", action="store_true", help="skip the fine-tuned vs base figures")
    args = parser.parse_args()
    results = run(args.quick, args.reps, args.max_tokens, args.threads, args.n_ctx, args.adapter, not args.no_finetuned)
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
