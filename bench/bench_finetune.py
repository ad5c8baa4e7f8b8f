"""Local LoRA fine-tuning: seconds per training step, and generation speed of the fine-tuned model in llama.cpp.

1. Seconds per optimizer step of `train_lora` on examples shaped like the sample site's training file: one
   paragraph-sized passage (~300 SmolLM2 tokens with the prompt) per example, batch 4 (the default sweep),
   `--max-seq-tokens` (384, the default setting), float32 (and bfloat16 with --bf16), torch threads as
   training uses them (all cores but one unless --threads). The base model's load time is reported apart.
2. Generation tokens/s through ChatClient (cache off) of the base GGUF and of the base GGUF + the exported LoRA
   adapter, greedy, same prompt, runs alternating. tokens/s = completion tokens / wall time of the call.
   Target: fine-tuned ≥ 0.8 x base.

    .venv/bin/python bench/bench_finetune.py [--steps 4] [--reps 5] [--max-tokens 128] [--bf16] [--quick] [--json OUT]

Not part of `make bench` (training steps take tens of seconds each on 2 cores): `bench/run_all.py --only finetune`.

The machine must be otherwise idle (2 cores: any other busy process slows both torch and llama.cpp a lot).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, finish, ratios, result, standalone_parser  # noqa: E402

sys.path.insert(0, str(ROOT))

import lxml.html  # noqa: E402

from mebot.assets.finetune.formats import chat_example  # noqa: E402
from mebot.resources.chat import ChatClient, chat_client  # noqa: E402
from mebot.resources.cpu_share import default_threads  # noqa: E402
from mebot.resources.lora import export_lora_gguf, load_base_model, train_lora  # noqa: E402
from mebot.resources.settings import PROJECT_ROOT, ChatModelSettings, LocalFinetuneSettings, Settings, SweepPoint  # noqa: E402

SITE = PROJECT_ROOT / "data" / "sample_site"
SECTION = "9. Fine-tuning (optional)"


def site_examples(settings: Settings, min_words: int = 180, max_words: int = 240) -> list[list[dict]]:
    """Passages of ~200 words (≈ 250-300 tokens) from the sample site, each with a question about its page."""
    passages: list[tuple[str, str]] = []
    for page in sorted(SITE.rglob("*.html")):
        doc = lxml.html.fromstring(page.read_text(encoding="utf-8"))
        title = " ".join((doc.findtext(".//title") or page.stem).split())
        words: list[str] = []
        for paragraph in doc.iter("p"):
            words.extend(paragraph.text_content().split())
            if len(words) >= min_words:
                passages.append((title, " ".join(words[:max_words])))
                words = []
    return [chat_example(settings, f"What did you write in '{title}'?", text) for title, text in passages]


def seconds_per_step(examples, dtype: str, steps: int, max_seq: int, threads: int) -> dict:
    point = SweepPoint(n_epochs=1, batch_size=4, learning_rate_multiplier=1.0, lora_r=8, lora_alpha=16)
    local = LocalFinetuneSettings(max_steps=steps, max_seq_tokens=max_seq, dtype=dtype)
    events: list[dict] = []
    trained = train_lora(examples, [], point, local, None, events.append, n_threads=threads)
    times = [e["seconds"] for e in events if e["event"] == "step"]
    return {"result": trained, "times": times, "tokens_per_step": trained.train_tokens / trained.steps}


def tokens_per_s(client: ChatClient, messages: list[dict], max_tokens: int) -> float:
    started = time.perf_counter()
    result = client.complete(messages, temperature=0.0, max_tokens=max_tokens)
    return result.completion_tokens / (time.perf_counter() - started)


def run(
    quick: bool = False,
    steps: int = 4,
    reps: int = 5,
    max_tokens: int = 128,
    max_seq_tokens: int = 384,
    threads: int = 0,
    bf16: bool = False,
) -> list[Result]:
    if quick:
        steps, reps = 2, 3
    threads = threads or default_threads()
    settings = Settings()

    started = time.perf_counter()
    base = load_base_model()
    load_s = time.perf_counter() - started
    examples = site_examples(settings)
    out = [result(SECTION, "base model load (GGUF → torch)", [load_s], "s", note=base.identity)]

    trained = None
    for dtype in ["float32"] + (["bfloat16"] if bf16 else []):
        stats = seconds_per_step(examples, dtype, steps, max_seq_tokens, threads)
        out.append(
            result(
                SECTION,
                f"LoRA training step, {dtype}",
                stats["times"],
                "s/step",
                note=f"batch 4, {stats['tokens_per_step']:.0f} tokens/step, max_seq_tokens {max_seq_tokens}, "
                f"{threads} thread(s), {len(examples)} sample-site examples",
            )
        )
        trained = trained or stats["result"]

    with tempfile.TemporaryDirectory() as tmp:
        adapter = export_lora_gguf(trained.peft_model, Path(tmp) / "adapter.gguf")
        chat = ChatModelSettings()
        plain = chat_client(chat)
        tuned = chat_client(chat, lora_path=str(adapter))
        messages = chat_example(settings, "Tell me about your work as a data engineer, in detail.")
        for client in (plain, tuned):  # load both models before timing
            client.complete(messages, temperature=0.0, max_tokens=4)
        base_rates, tuned_rates = [], []
        for _ in range(reps):
            base_rates.append(tokens_per_s(plain, messages, max_tokens))
            tuned_rates.append(tokens_per_s(tuned, messages, max_tokens))
    out += [
        result(SECTION, "llama.cpp generation, base", base_rates, "tokens/s"),
        result(SECTION, "llama.cpp generation, base + LoRA", tuned_rates, "tokens/s"),
        result(SECTION, "fine-tuned / base", ratios(tuned_rates, base_rates), "ratio", target=(">=", 0.8)),
    ]
    return out


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-seq-tokens", type=int, default=384)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores but one)")
    parser.add_argument("--bf16", action="store_true", help="also measure dtype bfloat16")
    args = parser.parse_args()
    results = run(args.quick, args.steps, args.reps, args.max_tokens, args.max_seq_tokens, args.threads, args.bf16)
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
