"""Facts about model endpoints shared by the chat and embedding clients."""

import ipaddress
from urllib.parse import urlsplit

# Sent as the API key to a loopback server, which ignores it; the SDK refuses to run without one.
PLACEHOLDER_API_KEY = "not-needed"


def is_loopback_url(url: str) -> bool:
    """A server on this machine (which needs no real API key: llama.cpp's server, vLLM, Ollama on 127.0.0.1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
