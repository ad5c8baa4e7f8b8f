"""resources/ is the bottom of the ladder: no module of it imports mebot.assets or mebot.pipeline, and importing
any of them changes nothing (no environment variable set, no model library loaded)."""

from __future__ import annotations

import json
import subprocess
import sys

from mebot.resources.settings import PROJECT_ROOT

SCRIPT = """
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
import mebot.resources as resources
names = sorted(m.name for m in pkgutil.walk_packages(resources.__path__, "mebot.resources."))
for name in names:
    importlib.import_module(name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
heavy = ("llama_cpp", "torch", "transformers", "peft", "sentence_transformers", "huggingface_hub")
print(json.dumps({
    "modules": names,
    "upper": sorted(m for m in sys.modules if m.startswith(("mebot.assets", "mebot.pipeline"))),
    "env_changed": changed,
    "heavy": sorted(m for m in heavy if m in sys.modules),
}))
"""


def test_resources_import_nothing_above_and_have_no_side_effects() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"mebot.resources.chat.base", "mebot.resources.chat.llama_cpp", "mebot.resources.layout"} <= set(
        report["modules"]
    )
    assert report["upper"] == []
    assert report["env_changed"] == []
    assert report["heavy"] == []
