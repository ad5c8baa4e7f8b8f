"""The one settings object: `mebot.yaml` parsed and validated before any work starts.

Each section is a strict pydantic model (unknown keys are errors, so a typo never silently falls back to a
default). `SettingsError` turns pydantic's report into lines that name the key, the bad value and what is
allowed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mebot.resources.hashing import json_hash

# The sections in their own modules, re-exported: every reader imports settings from here.
from mebot.resources.settings_base import SettingsError as SettingsError
from mebot.resources.settings_base import _Section, distinct, valid_patterns
from mebot.resources.settings_finetune import FinetuneSettings as FinetuneSettings
from mebot.resources.settings_finetune import LocalFinetuneSettings as LocalFinetuneSettings
from mebot.resources.settings_finetune import OpenAIFinetuneSettings as OpenAIFinetuneSettings
from mebot.resources.settings_finetune import SweepPoint as SweepPoint
from mebot.resources.settings_finetune import SweepPointSettings as SweepPointSettings
from mebot.resources.settings_finetune import SweepSettings as SweepSettings
from mebot.resources.settings_models import ChatModelSettings as ChatModelSettings
from mebot.resources.settings_models import EmbeddingModelSettings as EmbeddingModelSettings
from mebot.resources.settings_models import ModelsSettings as ModelsSettings
from mebot.resources.settings_models import Price as Price
from mebot.resources.settings_qa import DEFAULT_QA_FEW_SHOT as DEFAULT_QA_FEW_SHOT
from mebot.resources.settings_qa import DEFAULT_QA_PROMPT as DEFAULT_QA_PROMPT
from mebot.resources.settings_qa import ORIGINAL_QA_PROMPT as ORIGINAL_QA_PROMPT
from mebot.resources.settings_qa import QA_PROMPT_PRESETS as QA_PROMPT_PRESETS
from mebot.resources.settings_qa import FewShotExample as FewShotExample
from mebot.resources.settings_qa import QaSettings as QaSettings
from mebot.resources.settings_qa import resolve_qa_prompt as resolve_qa_prompt

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "mebot.yaml"
CONFIG_ENV_VAR = "MEBOT_CONFIG"


class SiteSettings(_Section):
    start_urls: list[str] = Field(
        default_factory=list,
        description="Where the crawl starts. Empty: serve `local_dir` on 127.0.0.1 and crawl that.",
    )
    local_dir: str = Field("data/sample_site", description="Site served locally when start_urls is empty.")
    local_port: int = Field(
        8765, ge=0, le=65535, description="Port for the local site (0: any free port). A fixed port keeps URLs stable."
    )
    allowed_domains: list[str] = Field(
        default_factory=list, description="Domains the crawl may visit. Empty: the hosts of start_urls."
    )
    allow_private_addresses: bool = Field(
        False,
        description="Let a crawl that starts at public hosts reach loopback, private and link-local addresses "
        "(through links or redirects). Off: such requests are refused and counted as `private_address`. A site "
        "whose start URL is itself on loopback or a private network is crawled either way.",
    )
    allow: list[str] = Field(default_factory=list, description="Regexes; when given, only matching links are followed.")
    deny: list[str] = Field(default_factory=list, description="Regexes; matching links are never followed.")
    index_only: list[str] = Field(
        default_factory=lambda: [r"/tags?/", r"/categor(y|ies)/", r"/page/\d+"],
        description="Regexes for listing pages: followed for their links but not kept as content.",
    )
    detect_listings: bool = Field(
        True,
        description="Also recognise listing pages by their structure (followed, not kept): pages that repeat the "
        "openings or descriptions of other pages (excerpts), and pages that are mostly links to the site's pages "
        "(never an og:type article). See assets/ingest/crawl.py.",
    )
    max_pages: int = Field(500, ge=1, description="Stop the crawl after this many responses.")
    download_delay: float = Field(0.25, ge=0, le=60, description="Seconds between requests to one site.")
    obey_robots_txt: bool = Field(True, description="Skip pages the site's robots.txt disallows for user_agent.")
    user_agent: str = Field(
        "mebot/0.1 (personal-site Q&A bot)", min_length=1, description="User-Agent header the crawler sends."
    )
    content_selectors: list[str] = Field(
        default_factory=lambda: ["article", "main", "[role=main]", "#content", ".content", "body"],
        min_length=1,
        description="CSS selectors tried in order; the first that matches holds the page's main content.",
    )
    drop_selectors: list[str] = Field(
        default_factory=lambda: [
            "script",
            "style",
            "noscript",
            "template",
            "svg",
            "form",
            "nav",
            "aside",
            "footer",
            "header",
            ".related-posts",
            ".related",
            ".comments",
            "#comments",
            ".post-nav",
            ".sharing",
            ".share",
            "[role=navigation]",
            "[role=complementary]",
            "[aria-hidden=true]",
        ],
        description="CSS selectors removed from the main content (site chrome).",
    )
    max_page_bytes: int = Field(5_000_000, ge=10_000, description="Larger responses are skipped, not read.")
    timeout_s: float = Field(30.0, gt=0, le=600, description="Seconds to wait for one response.")
    recrawl_cron: str = Field("0 3 * * 1", description="When the recrawl schedule runs (cron).")

    @field_validator("start_urls")
    @classmethod
    def _urls_are_http(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL; write it like 'https://example.com/'")
        return urls

    @field_validator("allow", "deny", "index_only")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        return valid_patterns(patterns)

    @field_validator("recrawl_cron")
    @classmethod
    def _cron_has_five_fields(cls, cron: str) -> str:
        if len(cron.split()) != 5:
            raise ValueError(f"{cron!r} is not a 5-field cron expression like '0 3 * * 1'")
        return cron


class PersonaSettings(_Section):
    name: str = Field("Tobias Renwick", min_length=1, description="Whose site this is; the bot speaks as them.")
    description: str = Field(
        "",
        description="One line about the person, added to the system message of RAG answers and of fine-tuning "
        "(training examples and the questions asked of a fine-tuned model); empty: no line.",
    )


DEFAULT_RAG_PROMPT = """Use the following pieces of context to answer the question at the end. If you don't know \
the answer, just say that "I am not programmed to answer that", don't try to make up an answer.

### Context ###
Your name is {persona_name}.

{context}

### Question ###
Question: {question}
Helpful answer in less than 100 words:"""


class RagSettings(_Section):
    chunk_tokens: int = Field(900, ge=50, le=8000, description="Chunk size in cl100k_base tokens.")
    overlap_tokens: int = Field(100, ge=0, description="Tokens shared by neighbouring chunks.")
    top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per question.")
    retrieval: Literal["hybrid", "dense"] = Field(
        "hybrid",
        description="How chunks are ranked: hybrid = BM25 and the vector index fused by reciprocal rank (names and "
        "numbers); dense = the vector index alone.",
    )
    context: Literal["sentences", "chunks"] = Field(
        "sentences",
        description="What the prompt gets: sentences = the best sentences of the retrieved chunks with their "
        "neighbours, labelled by page (small models); chunks = the whole retrieved chunks (large models).",
    )
    context_sentences: int = Field(1, ge=1, le=100, description="sentences: how many best sentences to take.")
    context_neighbours: int = Field(
        2, ge=0, le=20, description="sentences: sentences taken either side of each best sentence, on its page."
    )
    context_tokens: int = Field(
        400, ge=20, le=100_000, description="sentences: the most chat-model tokens of context (whole sentences)."
    )
    extractive_sentences: int = Field(
        2, ge=1, le=20, description="The extractive model (no LLM) quotes this many best sentences."
    )
    extractive_neighbours: int = Field(
        1, ge=0, le=10, description="The extractive model quotes this many sentences either side of each."
    )
    extractive_min_score: float = Field(
        0.35,
        ge=-1,
        le=1,
        description="The extractive model declines when no top-3 sentence has at least this cosine similarity "
        "with the question (docs/rag.md).",
    )
    prompt: str = Field(DEFAULT_RAG_PROMPT, description="Template with {persona_name}, {context} and {question}.")
    first_person: bool = Field(
        False,
        description="Tell the chat model, in a system message, to answer in the first person as persona.name (it "
        "costs the bundled model fact accuracy and refusals on the golden questions: bench/results.md).",
    )
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy, the same answer every time.")
    max_tokens: int = Field(128, ge=1, le=8192, description="Longest answer, in tokens (the prompt asks < 100 words).")
    max_question_chars: int = Field(2000, ge=10, le=100_000, description="Longer questions are refused.")
    ivf_min_vectors: int = Field(
        50_000, ge=1000, description="From this many vectors on, the index is IVF (approximate) instead of flat."
    )
    ivf_nprobe: int = Field(16, ge=1, le=4096, description="IVF index: clusters searched per query.")

    @field_validator("prompt")
    @classmethod
    def _prompt_has_placeholders(cls, prompt: str) -> str:
        missing = [name for name in ("{context}", "{question}") if name not in prompt]
        if missing:
            raise ValueError(f"the prompt template must contain {' and '.join(missing)}")
        try:
            prompt.format(persona_name="", context="", question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"the prompt template has a placeholder other than persona_name, context, question ({exc}); "
                "write literal braces as {{ and }}"
            ) from None
        return prompt

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagSettings:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        return self


DEFAULT_JUDGE_PROMPT = (
    "QUESTION: {question}\n\nANSWER: {reference}\n\nPROPOSED ANSWER: {answer}\n\nCan you rate the PROPOSED ANSWER "
    "to the above QUESTION from 0 (not even close) to 10 (exact meaning) on whether or not it matches ANSWER?  Only "
    "output the number."
)


class EvalSettings(_Section):
    splits: list[Literal["train", "validation", "test"]] = Field(
        default_factory=lambda: ["test"], min_length=1, description="Which questions every model answers."
    )
    max_questions: int = Field(
        4,
        ge=0,
        description="Questions each model answers: a deterministic sample by qa_id hash, the same for every model; "
        "0 = all. The default keeps `mebot run` to minutes on a laptop's CPU.",
    )
    judge_prompt: str = Field(
        DEFAULT_JUDGE_PROMPT, description="LLM-judge prompt with {question}, {reference} and {answer}."
    )
    judge_methods: list[Literal["logprob", "direct"]] = Field(
        default_factory=lambda: ["logprob", "direct"],
        min_length=1,
        description="logprob: expected score over the score tokens' probabilities; direct: the number it writes.",
    )
    judge_constrained: bool = Field(
        True,
        description="The judge can only answer with a score 0-10: a grammar on llama_cpp, a JSON schema (structured "
        "outputs) on an OpenAI-compatible server. false: free text.",
    )
    tie_epsilon: float = Field(0.5, ge=0, le=10, description="Judge scores closer than this are a tie (pairwise).")
    rouge_stemmer: bool = Field(True, description="Porter-stem words before ROUGE matching.")
    rouge_tokenizer: Literal["default", "unicode"] = Field(
        "default", description="default: rouge-score's ASCII tokenizer; unicode: keeps non-ASCII words."
    )
    validity_sample: int = Field(
        4, ge=2, le=1000, description="References judged against themselves and another's, to test the judge."
    )
    bootstrap_resamples: int = Field(1000, ge=10, le=100_000, description="Resamples for the 95% intervals.")
    seed: int = Field(0, description="Seed of the bootstrap and the validity pairing.")
    golden_path: str = Field(
        "golden/sample_site.yaml",
        description="The site's golden questions (YAML a person writes: question, accepted facts, source page); "
        "relative to the project root; empty: none.",
    )

    @field_validator("judge_prompt")
    @classmethod
    def _judge_prompt_has_placeholders(cls, prompt: str) -> str:
        missing = [name for name in ("{question}", "{reference}", "{answer}") if name not in prompt]
        if missing:
            raise ValueError(f"the judge prompt must contain {', '.join(missing)}")
        try:
            prompt.format(question="", reference="", answer="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"the judge prompt has a placeholder other than question, reference, answer ({exc}); "
                "write literal braces as {{ and }}"
            ) from None
        return prompt

    @field_validator("judge_methods")
    @classmethod
    def _methods_do_not_repeat(cls, methods: list[str]) -> list[str]:
        return distinct(methods, "methods")


class ReleaseSettings(_Section):
    max_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The most any served model's golden fact accuracy or refusal accuracy may fall against the "
        "current release before the `release` asset refuses to promote a new one (check golden_no_regression).",
    )


class VisitorLogSettings(_Section):
    enabled: bool = Field(
        True,
        description="Record every answered question (time, question, model, answer, sources, latency, flags, a "
        "random id; never an address or user agent) in data/visitors/visitor_log.sqlite, for review.",
    )
    keep_days: int = Field(90, ge=1, description="Visitor log entries older than this many days are deleted.")


class ServeSettings(_Section):
    host: str = Field("127.0.0.1", description="Address `mebot serve` listens on (0.0.0.0: every interface).")
    port: int = Field(8000, ge=1, le=65535, description="Port `mebot serve` listens on.")
    max_query_chars: int = Field(1000, ge=10, le=100_000, description="Longer questions get HTTP 413.")
    rate_limit_per_minute: float = Field(60, gt=0, description="Requests per minute per client (token bucket).")
    rate_limit_burst: int = Field(10, ge=1, description="Requests a client may send at once before limiting.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (e.g. 127.0.0.1, 10.0.0.0/8) of reverse proxies in front of the server: "
        "only from these are X-Forwarded-For and Forwarded believed to name the client. Empty: the connecting "
        "address is the client, whatever headers say.",
    )
    max_messages: int = Field(
        50, ge=1, le=10_000, description="Messages a chat completion may carry; more get HTTP 413."
    )
    max_messages_chars: int = Field(
        20_000, ge=100, le=1_000_000, description="Characters a chat completion's messages may hold in all (413)."
    )
    max_answers_per_client_per_day: int = Field(
        0,
        ge=0,
        description="Generated answers one client may get per UTC day (HTTP 429 beyond); 0 = no cap. For a paid "
        "chat provider, beside budget.max_usd: one visitor cannot spend the whole budget.",
    )
    max_queued_generations: int = Field(8, ge=1, description="Waiting answers beyond this get HTTP 503.")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Sites (origins such as https://me.example, no path) whose pages may call the bot from the "
        "browser: the widget (/widget.js) on the person's own site, or any other page; CORS answers only these. "
        "Empty: only the bot's own page.",
    )
    reload_check_s: float = Field(5.0, ge=0, description="How often to look for a newer materialized index.")
    finetune_metric: Literal[
        "golden_fact_accuracy", "rougeL_f1", "rouge1_f1", "rouge2_f1", "similarity", "judge_expected", "judge_direct"
    ] = Field(
        "golden_fact_accuracy",
        description="The leaderboard column (higher is better) that picks the fine-tuned model `finetune` names in "
        "/api and /v1 (golden fact accuracy is checked against facts the person wrote).",
    )
    default_model: str = Field(
        "best",
        description="The model the page preselects and /api and `mebot ask` answer with when none is named: `best` "
        "(the served model, rag, extractive or fine-tuned, with the highest serve.default_metric; the served "
        "release's golden figures, else the leaderboard; rag while none is measured), `finetune`, rag, extractive "
        "or ft-<sweep key>. /v1/models says which it is and why.",
    )
    default_metric: Literal[
        "golden_fact_accuracy",
        "golden_refusal_accuracy",
        "rougeL_f1",
        "rouge1_f1",
        "rouge2_f1",
        "similarity",
        "judge_expected",
        "judge_direct",
    ] = Field(
        "golden_fact_accuracy",
        description="The leaderboard column (higher is better) that picks the served default when "
        "serve.default_model is `best`.",
    )
    release: ReleaseSettings = Field(
        default_factory=ReleaseSettings, description="What a new release must pass to be served (data/releases/)."
    )
    log: VisitorLogSettings = Field(default_factory=VisitorLogSettings, description="The visitor log.")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cors_origins" in data:
            raise ValueError(
                "serve.cors_origins is now serve.allowed_origins (the same list: the sites allowed to call the bot "
                "from the browser); rename the key"
            )
        return data

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            scheme, _, rest = entry.partition("://")
            if scheme not in ("http", "https") or not rest or any(c in rest for c in "/?#*@ "):
                raise ValueError(
                    f"{entry!r} is not an origin; write it like 'https://me.example' or 'http://127.0.0.1:8080' "
                    "(scheme, host and port only, no path or trailing slash)"
                )
        return distinct(entries, "serve.allowed_origins")

    @field_validator("default_model")
    @classmethod
    def _default_model_is_a_model(cls, name: str) -> str:
        if name in ("best", "finetune", "rag", "extractive") or re.fullmatch(r"ft-[A-Za-z0-9][\w.-]{0,99}", name):
            return name
        raise ValueError(
            f"serve.default_model {name!r} is not a model; write best (the best served model by "
            "serve.default_metric), finetune, rag, extractive or ft-<sweep key>"
        )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, entries: list[str]) -> list[str]:
        import ipaddress

        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network; write it like '127.0.0.1' or '10.0.0.0/8'"
                ) from None
        return entries


class BudgetSettings(_Section):
    max_usd: float = Field(5.0, ge=0, description="A materialization stops before it would spend more.")


class RunSettings(_Section):
    max_parallel: int = Field(
        2,
        ge=1,
        le=64,
        description="Runs at once (`mebot run`, the finetune job's executor); with automatic threads "
        "(n_threads 0) `mebot run` divides the cores among them, fixed n_threads multiply.",
    )


class Settings(_Section):
    site: SiteSettings = Field(default_factory=SiteSettings, description="What to crawl and how politely.")
    persona: PersonaSettings = Field(default_factory=PersonaSettings, description="The person the bot speaks as.")
    rag: RagSettings = Field(default_factory=RagSettings, description="Chunking, retrieval and RAG answers.")
    qa: QaSettings = Field(default_factory=QaSettings, description="Synthetic questions for fine-tuning.")
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="Chat, embedding and judge models.")
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings, description="Fine-tuning and its sweep.")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="How the models are compared.")
    serve: ServeSettings = Field(default_factory=ServeSettings, description="The web page and HTTP API.")
    budget: BudgetSettings = Field(default_factory=BudgetSettings, description="Spending limit for paid APIs.")
    run: RunSettings = Field(default_factory=RunSettings, description="How `mebot run` schedules its work.")

    def section(self, path: str) -> Any:
        """A section (`rag`) or a value inside one (`rag.top_k`, `models.embedding`)."""
        value: Any = self
        for part in path.split("."):
            if not isinstance(value, BaseModel) or part not in type(value).model_fields:
                known = ", ".join(type(value).model_fields) if isinstance(value, BaseModel) else "nothing"
                raise KeyError(f"no settings section {path!r}; at {part!r} the choices are: {known}")
            value = getattr(value, part)
        return value

    def fingerprint(self, sections: tuple[str, ...]) -> str:
        """A short hash of the named sections' values: what an asset's code_version is made of."""
        payload = {}
        for name in sorted(sections):
            value = self.section(name)
            payload[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        return json_hash(payload, length=12)

    def resolve_path(self, path: str) -> Path:
        """Relative paths in settings are relative to the project root, not to the caller's directory."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


def _format_error(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        parent = _section_model_for(error["loc"][:-1])
        allowed = ", ".join(parent.model_fields) if parent else "see mebot.yaml"
        return f"{key}: unknown setting; allowed keys here: {allowed}"
    return f"{key}: got {error.get('input')!r}; {message}"


def _section_model_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def parse_settings(raw: Any, source: str = "settings") -> Settings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(error) for error in exc.errors()]
        raise SettingsError(f"invalid settings in {source}:\n  " + "\n  ".join(lines)) from None


def config_path_from_env() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH).resolve()


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_settings(path: str | Path | None = None) -> Settings:
    config_path = Path(path).resolve() if path else config_path_from_env()
    if not config_path.is_file():
        raise SettingsError(f"settings file {config_path} does not exist; pass --config PATH or create it")
    try:
        raw = yaml.load(config_path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise SettingsError(f"{config_path} is not valid YAML: {exc}") from None
    return parse_settings(raw, source=str(config_path))


# Definition metadata key listing the settings sections an asset reads; its code_version is stamped from them.
SETTINGS_SECTIONS_KEY = "mebot/settings_sections"


def reads_settings(*sections: str) -> dict[str, str]:
    """Definition metadata for an asset that reads these settings sections: `metadata=reads_settings("rag")`."""
    for name in sections:
        Settings().section(name)  # fails on a misspelt section name at import time
    return {SETTINGS_SECTIONS_KEY: ", ".join(sections)}


def sections_of(metadata: dict[str, Any]) -> tuple[str, ...]:
    value = metadata.get(SETTINGS_SECTIONS_KEY)
    text = getattr(value, "value", value) or ""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def stamped_code_version(base: str, settings: Settings, sections: tuple[str, ...]) -> str:
    """`<base>+s<hash of the sections>`: editing a setting changes exactly the readers' code versions."""
    return f"{base}+s{settings.fingerprint(sections)}" if sections else base


class SettingsResource(dg.ConfigurableResource):
    """The project's settings file (mebot.yaml), validated; every asset reads its settings through this."""

    config_path: str

    def get(self) -> Settings:
        return load_settings(self.config_path)

    def for_asset(self, context: dg.AssetExecutionContext) -> Settings:
        """The settings, after making sure they are the ones the asset's code_version was stamped from.

        Otherwise a file edited after the code location loaded would be used under the old code version, and
        the UI would call the result up to date.
        """
        settings = self.get()
        for spec in context.assets_def.specs:
            if spec.key not in context.selected_asset_keys or "+s" not in (spec.code_version or ""):
                continue
            base = spec.code_version.rsplit("+s", 1)[0]
            expected = stamped_code_version(base, settings, sections_of(spec.metadata))
            if spec.code_version != expected:
                raise SettingsError(
                    f"{self.config_path} changed after the definitions were loaded (asset "
                    f"{spec.key.to_user_string()} was stamped {spec.code_version}, the file now gives {expected}): "
                    "reload the code location (Reload in the UI) or run mebot again"
                )
        return settings
