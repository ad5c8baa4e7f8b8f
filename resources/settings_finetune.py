"""The `finetune` section of the settings: the sweep (a grid and explicit points, one job each), the local LoRA
trainer and OpenAI fine-tuning, and how a fine-tuned model answers. Re-exported by mebot.resources.settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mebot.resources.settings_base import _Section, distinct


class SweepPointSettings(_Section):
    """One explicit sweep point (`finetune.sweep.points`), e.g. `{n_epochs: 4, learning_rate_multiplier: 0.2,
    batch_size: 1}`: one fine-tuning job beside the grid's."""

    n_epochs: int = Field(ge=1, description="Passes over the training split.")
    learning_rate_multiplier: float = Field(gt=0, le=100, description="Scales the base learning rate.")
    batch_size: int = Field(ge=1, description="Examples per optimizer step.")
    lora_r: int = Field(8, ge=1, description="local_lora only.")
    lora_alpha: int = Field(16, ge=1, description="local_lora only.")


class SweepSettings(_Section):
    """The fine-tuning jobs (one `finetuned_models` partition each): every combination of the grid's values, then
    the explicit `points`. An empty grid list turns the grid off (only the points run)."""

    n_epochs: list[int] = Field(default_factory=lambda: [1], description="Grid: passes over the training split.")
    batch_size: list[int] = Field(default_factory=lambda: [2], description="Grid: examples per optimizer step.")
    learning_rate_multiplier: list[float] = Field(
        default_factory=lambda: [0.5, 2.0], description="Grid: scales of the base learning rate."
    )
    lora_r: list[int] = Field(default_factory=lambda: [8], description="local_lora only.")
    lora_alpha: list[int] = Field(default_factory=lambda: [16], description="local_lora only.")
    points: list[SweepPointSettings] = Field(
        default_factory=list,
        description="Explicit points beside the grid, each {n_epochs, learning_rate_multiplier, batch_size} "
        "(lora_r 8 and lora_alpha 16 unless given).",
    )

    def grid_points(self) -> list[SweepPoint]:
        """Every combination of the grid's values, in a stable order (none when a list is empty)."""
        return [
            SweepPoint(n_epochs=e, batch_size=b, learning_rate_multiplier=lr, lora_r=r, lora_alpha=a)
            for e in self.n_epochs
            for b in self.batch_size
            for lr in self.learning_rate_multiplier
            for r in self.lora_r
            for a in self.lora_alpha
        ]

    def all_points(self) -> list[SweepPoint]:
        """The grid's points, then the explicit points in the order given."""
        return self.grid_points() + [SweepPoint(**point.model_dump()) for point in self.points]

    @model_validator(mode="after")
    def _points_are_distinct(self) -> SweepSettings:
        grid = self.grid_points()
        seen: dict[str, str] = {point.key: "a point of the grid" for point in grid}
        for number, point in enumerate(self.points):
            key = SweepPoint(**point.model_dump()).key
            if key in seen:
                raise ValueError(
                    f"points[{number}] ({key}) repeats {seen[key]}: every sweep point is one job and one partition "
                    "key, so give each once"
                )
            seen[key] = f"points[{number}]"
        if not seen:
            raise ValueError(
                "the sweep has no point: the grid is off (one of its lists is empty) and points is empty; give "
                "grid values or points, e.g. points: [{n_epochs: 4, learning_rate_multiplier: 0.2, batch_size: 1}]"
            )
        return self

    @field_validator("n_epochs", "batch_size", "lora_r", "lora_alpha")
    @classmethod
    def _positive_ints(cls, values: list[int]) -> list[int]:
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"values must be at least 1, got {bad}")
        return distinct(values)

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_floats(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0 < v <= 100]
        if bad:
            raise ValueError(f"multipliers must be in (0, 100], got {bad}")
        return distinct(values)


class SweepPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    lora_r: int
    lora_alpha: int

    @property
    def key(self) -> str:
        """A readable partition key, e.g. `e4-b1-lr0.2` (LoRA shape added when it is not the default r8/a16)."""
        key = f"e{self.n_epochs}-b{self.batch_size}-lr{self.learning_rate_multiplier:g}"
        if (self.lora_r, self.lora_alpha) != (8, 16):
            key += f"-r{self.lora_r}-a{self.lora_alpha}"
        return key


class LocalFinetuneSettings(_Section):
    base_lr: float = Field(
        1e-3,
        gt=0,
        le=1,
        description="Learning rate = base_lr x learning_rate_multiplier (1e-3: the default sweep's dozen steps "
        "move the loss; 2e-4 barely did).",
    )
    max_seq_tokens: int = Field(384, ge=32, le=8192, description="Training examples are cut to this many tokens.")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: run all epochs).")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Training precision; bfloat16 is much slower on CPUs without bf16 units."
    )
    n_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="torch threads; 0 means automatic: in `mebot run` the run's share of the cores, "
        "else all cores but one (on a busy machine, threads that wait for each other are slower than one).",
    )
    seed: int = Field(42, description="Seeds the adapter's initial weights and the example order.")


class OpenAIFinetuneSettings(_Section):
    base_model: str = Field("gpt-4o-mini-2024-07-18", min_length=1, description="The OpenAI model fine-tuned.")
    suffix: str = Field("mebot", max_length=18, description="Added to the fine-tuned model's name.")
    seed: int = Field(42, ge=0, description="Sent with the job, so a rerun of a sweep point is reproducible.")
    poll_interval_s: float = Field(30.0, gt=0, description="Seconds between job status checks.")
    training_price_per_1m: float = Field(
        0.0,
        ge=0,
        description="USD per 1M training tokens for the budget check; 0 means the price table in "
        "assets/finetune_data.py (a base model missing there is refused until this is set).",
    )


class FinetuneSettings(_Section):
    backend: Literal["local_lora", "openai"] = Field(
        "local_lora", description="local_lora: LoRA on the bundled model, on this machine; openai: OpenAI jobs."
    )
    completion_stop: str = Field(" END", min_length=1, description="Ends every completion; the stop sequence.")
    answer_temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature of fine-tuned answers.")
    answer_max_tokens: int = Field(256, ge=1, le=8192, description="Longest fine-tuned answer, in tokens.")
    answer_repeat_penalty: float = Field(
        1.1,
        ge=1,
        le=3,
        description="llama_cpp: penalty on the tokens of the last `answer_repeat_last_n` (1.0: none); keeps a "
        "fine-tuned model from repeating itself until max_tokens.",
    )
    answer_repeat_last_n: int = Field(
        256,
        ge=0,
        le=8192,
        description="llama_cpp: how many recent tokens answer_repeat_penalty looks back over (llama.cpp's default "
        "64 let a model repeat a paragraph once it had left the window).",
    )
    answer_frequency_penalty: float = Field(
        0.3,
        ge=-2,
        le=2,
        description="OpenAI-compatible servers: penalty per earlier occurrence of a token (0: none).",
    )
    system_prompt: str = Field(
        "You are {persona_name}. Answer questions about yourself and your writing in your own voice.",
        description="System message of the chat-format examples.",
    )
    max_example_tokens: int = Field(4096, ge=64, description="Longer training examples fail the file check.")
    sweep: SweepSettings = Field(default_factory=SweepSettings, description="The fine-tuning jobs to run.")
    local: LocalFinetuneSettings = Field(default_factory=LocalFinetuneSettings, description="The local_lora trainer.")
    openai: OpenAIFinetuneSettings = Field(default_factory=OpenAIFinetuneSettings, description="OpenAI fine-tuning.")

    def sweep_points(self) -> list[SweepPoint]:
        """Every sweep point, in a stable order (the grid's, then `sweep.points`); their keys are the
        `finetuned_models` partitions."""
        return self.sweep.all_points()
