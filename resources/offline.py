"""Nothing is downloaded at run time: the switch that keeps the Hugging Face libraries offline.

huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported (by sentence-transformers, transformers or
peft), so `hub_offline()` is called just before each of those imports rather than when a module of mebot is
imported (imports have no side effects). A value already in the environment is kept.
"""

from __future__ import annotations

import os


def hub_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
