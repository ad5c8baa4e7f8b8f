"""Facts about model endpoints shared by the chat, embedding and fine-tuning clients."""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

# Sent as the API key to a loopback server, which ignores it; the SDK refuses to run without one.
PLACEHOLDER_API_KEY = "not-needed"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


def is_loopback_url(url: str) -> bool:
    """A server on this machine (which needs no real API key: llama.cpp's server, vLLM, Ollama on 127.0.0.1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def openai_base_url(configured: str) -> str:
    """The OpenAI-compatible endpoint: the configured base_url, else $OPENAI_BASE_URL, else OpenAI itself."""
    return (configured or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")


def api_key_from_env(env_name: str, base_url: str) -> str | None:
    """The key in $`env_name`; a placeholder for a loopback server without one; None when a remote one lacks it
    (the caller says so in its own words)."""
    key = os.environ.get(env_name, "")
    if key:
        return key
    if base_url and is_loopback_url(base_url):
        return PLACEHOLDER_API_KEY
    return None
