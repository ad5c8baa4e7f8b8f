import os
import subprocess
import sys

from mebot.resources.settings import PROJECT_ROOT


def test_cl100k_base_loads_offline_from_an_empty_cache(tmp_path):
    """A fresh cache dir and a dead proxy: any download attempt would fail, so success means offline. The
    project's own token counting places the bundled file (no import side effect does); plain tiktoken calls
    made afterwards in the same process (langchain's splitter) find it too."""
    script = (
        "import tiktoken\n"
        "from mebot.resources.tokens import count_tokens\n"
        "assert count_tokens('hello world') == 2\n"
        "enc = tiktoken.get_encoding('cl100k_base')\n"
        "print(enc.encode('hello world'), tiktoken.encoding_for_model('gpt-4').name)\n"
    )
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[15339,", "1917]", "cl100k_base"]
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_count_tokens_counts_special_token_text_as_plain_text():
    from mebot.resources.tokens import count_tokens

    assert count_tokens("hello world") == 2
    assert count_tokens("<|endoftext|>") > 1
