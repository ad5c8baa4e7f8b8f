"""The check tier's guard against the real models, for the test process and every Python process it starts.

In `make check` (pytest -m "not full") the constructors of the real models raise `NeedsFullTier`: llama.cpp's
`Llama` (the bundled GGUF), sentence-transformers' `SentenceTransformer` (MiniLM) and transformers'
`PreTrainedModel.from_pretrained` (LoRA training). tests/conftest.py installs it in the test process and puts this
folder first on PYTHONPATH with MEBOT_TEST_TIER=check, so Python runs this file as `sitecustomize` in the
subprocesses a test starts too (`mebot run`, `mebot serve`, Dagster's step processes): a test that loads a real
model anywhere fails, saying to mark it @pytest.mark.full or to use the fakes of tests/fakes.py.

Self-contained (the standard library only): a subprocess may not have the tests package on its path.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import Any

TIER_ENV = "MEBOT_TEST_TIER"
CHECK_TIER = "check"


class NeedsFullTier(RuntimeError):
    """Raised in the check tier by a constructor of a real model."""


def message(what: str) -> str:
    return (
        f"this test loads {what}, which `make check` (pytest -m 'not full') does not allow: it needs the full "
        "tier. Mark it @pytest.mark.full (it then runs in `make test`), or use the fake models of tests/fakes.py "
        "(FakeChatModelResource, FakeEmbedderResource)."
    )


class HeavyModelGuard(importlib.abc.MetaPathFinder):
    """Wraps the real models' constructors as their modules are imported; every refused attempt is recorded in
    `hits`, so a test fails even where the code under test catches the error."""

    # module -> (class, method, what it loads)
    TARGETS = {
        # __new__, not __init__: no half-built object is left whose __del__ would fail
        "llama_cpp": ("Llama", "__new__", "a llama.cpp model (llama_cpp.Llama: the bundled GGUF)"),
        "sentence_transformers": ("SentenceTransformer", "__new__", "a sentence-transformers model (MiniLM)"),
        "transformers.modeling_utils": ("PreTrainedModel", "from_pretrained", "a transformers model (LoRA)"),
    }

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.installed = False

    def install(self) -> None:
        if self.installed:
            return
        for name in self.TARGETS:
            if name in sys.modules:
                self._guard(sys.modules[name], name)
        sys.meta_path.insert(0, self)
        self.installed = True

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                execute = spec.loader.exec_module

                def exec_module(module: Any, execute: Any = execute) -> None:
                    execute(module)
                    self._guard(module, name)

                spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec
        return None

    def _guard(self, module: Any, name: str) -> None:
        class_name, method, what = self.TARGETS[name]
        cls = getattr(module, class_name, None)
        if cls is None:
            return
        hits = self.hits

        def refuse(*args: Any, **kwargs: Any) -> Any:
            hits.append(what)
            raise NeedsFullTier(message(what))

        if method == "__new__":
            setattr(cls, method, staticmethod(refuse))  # called as cls.__new__(cls, ...)
        else:
            setattr(cls, method, classmethod(refuse))


GUARD = HeavyModelGuard()

if os.environ.get(TIER_ENV) == CHECK_TIER:
    GUARD.install()
