"""The portable llama.cpp build (AVX2/FMA/F16C, what `make setup` installs) against a native one
(`MEBOT_LLAMA_NATIVE=1 make setup`, -march=native), measured in one run on the bundled SmolLM2 GGUF.

Every wheel found under .wheels/llama-cpp-python-<version>-<build>/ is unpacked into a temporary folder and
loaded by a fresh process that puts it first on sys.path, so the two builds run the same Python code, the same
model, prompt and threads. Repetitions alternate between the builds. Figures (llama.cpp's own counters):
- generation tokens/s (decode), prompt tokens/s (a ~500-token prompt), and native / portable ratios;
- the wheel's build time as the Makefile recorded it (.build-seconds; the machine's load at that time counts).

    .venv/bin/python bench/bench_llama_build.py [--reps 3] [--json OUT]

Build the native wheel first (it is not installed, only built): `MEBOT_LLAMA_NATIVE=1 make .wheels/...native.../.built`,
or `make bench-native`. Without it, only the portable figures are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, Result, failed, finish, ratios, result, standalone_parser  # noqa: E402
from _corpus import sample_site_pages  # noqa: E402

SECTION = "0. llama.cpp build"
WHEELHOUSES = ROOT / ".wheels"

# Runs in a fresh process with the unpacked wheel first on sys.path; prints one JSON line.
PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import llama_cpp
assert llama_cpp.__file__.startswith(sys.argv[1]), llama_cpp.__file__
from mebot.resources.chat import bundled_gguf_path
prompt, threads = sys.argv[2], int(sys.argv[3])
llm = llama_cpp.Llama(model_path=str(bundled_gguf_path()), n_ctx=2048, n_threads=threads, verbose=False)
def counters():
    data = llama_cpp.llama_perf_context(llm.ctx)
    return data.t_p_eval_ms / 1000, data.n_p_eval, data.t_eval_ms / 1000, data.n_eval
llama_cpp.llama_perf_context_reset(llm.ctx)
llm.create_completion(prompt, max_tokens=1, temperature=0.0)
p_s, p_n, _, _ = counters()
short = prompt[:400]  # a continuation of site text: the model writes on rather than stopping
timings = []
for max_tokens in (1, 97):  # the difference is the time of 96 generated tokens, prompt and start-up excluded
    llm.reset()
    started = time.perf_counter()
    no_eos = {llm.token_eos(): -100.0}
    out = llm.create_completion(short, max_tokens=max_tokens, temperature=0.0, stop=[], logit_bias=no_eos)
    timings.append((time.perf_counter() - started, out["usage"]["completion_tokens"]))
e_n = timings[1][1] - timings[0][1]
e_s = timings[1][0] - timings[0][0]
print(json.dumps({"prompt_tps": p_n / max(p_s, 1e-9), "prompt_tokens": p_n, "gen_tps": e_n / max(e_s, 1e-9)}))
"""


def builds() -> dict[str, Path]:
    """build name (portable-..., native-...) -> its wheel file."""
    found = {}
    for house in sorted(WHEELHOUSES.glob("llama-cpp-python-*")):
        wheels = sorted(house.glob("*.whl"))
        if wheels:
            found[house.name.split("-", 4)[-1]] = wheels[0]
    return found


def build_seconds(wheel: Path) -> float | None:
    marker = wheel.parent / ".build-seconds"
    return float(marker.read_text()) if marker.is_file() else None


def probe(unpacked: Path, prompt: str, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(unpacked), prompt, str(threads)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = standalone_parser(__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    found = builds()
    if not found:
        return finish([failed(SECTION, "llama.cpp builds", "no wheel under .wheels/; run make setup")], args.json)
    words = " ".join(sample_site_pages()["text"]).split()[:350]
    prompt = " ".join(words)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = {}
        for name, wheel in found.items():
            target = Path(tmp) / name
            zipfile.ZipFile(wheel).extractall(target)
            unpacked[name] = target
        runs: dict[str, list[dict]] = {name: [] for name in found}
        for _ in range(args.reps):
            for name in found:  # alternate, so drift in the machine's load hits every build alike
                try:
                    runs[name].append(probe(unpacked[name], prompt, args.threads))
                except Exception as exc:  # a build that dies here (SIGILL) is a finding, not a crash
                    results.append(failed(SECTION, f"{name}: run", str(exc)))
                    break
    for name, samples in runs.items():
        if not samples:
            continue
        note = f"{found[name].name}; {args.threads} threads; prompt {int(samples[0]['prompt_tokens'])} tokens"
        results.append(result(SECTION, f"{name}: generation", [s["gen_tps"] for s in samples], "tokens/s", note=note))
        results.append(result(SECTION, f"{name}: prompt processing", [s["prompt_tps"] for s in samples], "tokens/s"))
        seconds = build_seconds(found[name])
        if seconds is not None:
            results.append(
                result(SECTION, f"{name}: wheel build", [seconds / 60], "min", note="2 cores, recorded by make")
            )
    portable = next((n for n in runs if n.startswith("portable") and runs[n]), None)
    native = next((n for n in runs if n.startswith("native") and runs[n]), None)
    if portable and native and len(runs[portable]) == len(runs[native]):
        for metric, label in (("gen_tps", "generation"), ("prompt_tps", "prompt processing")):
            values = ratios([s[metric] for s in runs[native]], [s[metric] for s in runs[portable]])
            results.append(result(SECTION, f"native / portable: {label}", values, "ratio"))
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
