"""A server started before anything is materialized: not ready, then ready once the data appears, then a newer
index version and new fine-tuned adapters are picked up without a restart. Its own `mebot serve` process."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from mebot.pipeline.server.models import materialization_signature
from mebot.resources.embeddings import build_embedder
from mebot.resources.settings import load_settings
from mebot.resources.vector_index import load_index, write_index
from tests.pipeline.server.helpers import QUESTION, QUESTION_PAGE, start_server, stop_server

NEW_FACT = "My pet quokka is called Professor Wobbles and he lives in the greenhouse behind the shed."
NEW_URL = "http://example.test/quokka/"


@pytest.fixture(scope="module")
def late(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-late")
    data = root / "data"
    data.mkdir()
    running = start_server(built.config, data, root / "home", root / "serve.log")
    yield running
    stop_server(running)


def wait_for(predicate, timeout_s: float = 60, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not true within {timeout_s} s")


def test_without_an_index_the_server_starts_but_is_not_ready(late):
    health = httpx.get(f"{late.url}/healthz", timeout=30)
    assert health.status_code == 503 and health.json()["ready"] is False
    response = httpx.get(f"{late.url}/api", params={"query": QUESTION}, timeout=30)
    assert response.status_code == 503
    assert "run `make run` first" in response.json()["error"]["message"]
    assert str(late.data) not in response.text
    assert httpx.get(f"{late.url}/v1/models", timeout=30).json()["data"] == []
    chat = httpx.post(
        f"{late.url}/v1/chat/completions",
        timeout=30,
        json={"model": "rag", "messages": [{"role": "user", "content": QUESTION}]},
    )
    assert chat.status_code == 503
    assert late.process.poll() is None


def test_a_materialization_appearing_later_is_picked_up(late, built):
    shutil.copytree(built.data / "index", late.data / "index")
    shutil.copytree(built.data / "cache", late.data / "cache")
    shutil.copy(built.data / "rag_chunks.parquet", late.data / "rag_chunks.parquet")
    wait_for(lambda: httpx.get(f"{late.url}/healthz", timeout=30).status_code == 200)
    body = httpx.get(f"{late.url}/api", params={"query": QUESTION, "retrieval_only": 1}, timeout=30).json()
    assert body["sourceDocuments"][0]["metadata"]["url"].endswith(QUESTION_PAGE)


def test_a_newer_index_version_is_swapped_in_without_a_restart(late, built):
    settings = load_settings(built.config)
    before = httpx.get(f"{late.url}/healthz", timeout=30).json()["index_version"]
    # a new chunk and a new index version holding its vector, as a re-materialization would write them
    chunks = pd.read_parquet(late.data / "rag_chunks.parquet")
    extra = chunks.iloc[[0]].copy()
    extra["chunk_id"], extra["url"], extra["title"], extra["text"] = "quokka-chunk", NEW_URL, "Quokka", NEW_FACT
    index = load_index(late.data / "index")
    vectors = index.index.reconstruct_n(0, index.size)
    embedder = build_embedder(settings.models.embedding)
    vectors = np.vstack([vectors, embedder.embed([NEW_FACT])]).astype("float32")
    write_index(
        late.data / "index",
        vectors,
        [*index.chunk_ids.tolist(), "quokka-chunk"],
        index.identity,
        settings.rag.ivf_min_vectors,
        settings.rag.ivf_nprobe,
    )
    partial = late.data / ".rag_chunks.parquet.tmp"
    pd.concat([chunks, extra]).to_parquet(partial, index=False)
    os.replace(partial, late.data / "rag_chunks.parquet")
    assert materialization_signature(late.data, late.data / "index")[0] != before

    def top_url():
        body = httpx.get(
            f"{late.url}/api", timeout=30, params={"query": "What is your pet quokka called?", "retrieval_only": 1}
        ).json()
        return body["sourceDocuments"][0]["metadata"]["url"] == NEW_URL

    wait_for(top_url)
    after = httpx.get(f"{late.url}/healthz", timeout=30).json()["index_version"]
    assert after != before
    assert late.process.poll() is None


def test_finetuned_adapters_appear_as_ft_models(late):
    (late.data / "models" / "e2-b4-lr0.5").mkdir(parents=True)
    (late.data / "models" / "e2-b4-lr0.5" / "adapter.gguf").write_bytes(b"GGUF")
    (late.data / "models" / "unfinished").mkdir()  # no adapter yet: not served

    def names():
        return [m["id"] for m in httpx.get(f"{late.url}/v1/models", timeout=30).json()["data"]]

    wait_for(lambda: "ft-e2-b4-lr0.5" in names())
    assert names() == ["rag", "extractive", "finetune", "ft-e2-b4-lr0.5"]
    error = httpx.get(f"{late.url}/api", params={"query": QUESTION, "model": "finetune:nope"}, timeout=30).json()
    assert "finetune:e2-b4-lr0.5" in error["error"]["message"]


def test_a_full_generation_queue_answers_503(late):
    """Distinct uncached questions at once: one generates, one waits (max_queued_generations 1), the rest 503.
    Last in this module: the server (with its queued work) is stopped right after."""

    async def burst():
        async with httpx.AsyncClient(base_url=late.url, timeout=600) as client:
            tasks = [
                asyncio.create_task(client.get("/api", params={"query": f"Question number {i}: what do you bake?"}))
                for i in range(6)
            ]
            busy = []
            for finished in asyncio.as_completed(tasks, timeout=120):
                response = await finished
                if response.status_code == 503:
                    busy.append(response)
                if len(busy) == 4:
                    break
            for task in tasks:
                task.cancel()
            return busy

    busy = asyncio.run(burst())
    assert len(busy) == 4
    for response in busy:
        assert response.json()["error"]["code"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
    assert httpx.get(f"{late.url}/healthz", timeout=30).status_code == 200
