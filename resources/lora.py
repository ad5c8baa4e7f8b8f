"""Local fine-tuning: LoRA (peft) on the bundled SmolLM2 weights, and the adapter as a GGUF LoRA for llama.cpp.

`load_base_model()` dequantizes the bundled GGUF into a trainable torch model once per process (it is slow), and
every training works on a copy; `train_lora()` trains with the loss on the assistant's answer only;
`export_lora_gguf()` writes the adapter that llama.cpp applies on top of the same GGUF."""

from __future__ import annotations

import copy
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from mebot.resources.chat import bundled_gguf_path
from mebot.resources.cpu_share import resolve_threads
from mebot.resources.files import atomic_output, write_atomically
from mebot.resources.layout import PEFT_ADAPTER_DIR, TRAINING_LOG_FILE, model_dir
from mebot.resources.offline import hub_offline
from mebot.resources.settings import LocalFinetuneSettings, SweepPoint

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
# torch's CPU threads spin-wait for each other like llama.cpp's, so one busy process elsewhere (another
# partition's run, the UI) slows every step when all cores train: like the chat client, training leaves a core
# for everything else unless told otherwise (resources/cpu_share.py).
IGNORE_INDEX = -100
GGUF_ARCH = "llama"

# module name in the HF model → llama.cpp tensor base name
_GGUF_TENSOR = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; names the step and the sweep point."""


@dataclass
class BaseModel:
    model: Any  # transformers LlamaForCausalLM, float32, never trained itself (training copies it)
    tokenizer: Any
    gguf_path: Path
    identity: str  # e.g. "SmolLM2-135M-Instruct.Q4_1.gguf (llama, 30 layers)"
    load_seconds: float


@dataclass
class TrainingResult:
    point_key: str
    learning_rate: float
    train_losses: list[float]  # one per optimizer step
    val_losses: list[float]  # one per epoch (plus one at a max_steps stop inside an epoch)
    val_steps: list[int]  # the step after which each validation loss was measured
    steps: int
    epochs_completed: float  # fractional when max_steps stopped inside an epoch
    stopped_by_max_steps: bool
    seconds: float  # training and validation, not the model load
    train_seconds: float  # optimizer steps only
    n_train: int
    n_validation: int
    train_tokens: int  # tokens seen by training steps (prompt + answer, over all epochs)
    truncated_examples: int  # examples cut to max_seq_tokens
    dtype: str
    threads: int
    base_model: str
    peft_model: Any = field(default=None, repr=False)

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / self.steps if self.steps else 0.0

    @property
    def final_train_loss(self) -> float:
        return self.train_losses[-1] if self.train_losses else math.nan

    @property
    def final_val_loss(self) -> float:
        return self.val_losses[-1] if self.val_losses else math.nan

    def log_dict(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (training_log.json)."""
        data = asdict(self)
        data.pop("peft_model")
        data["seconds_per_step"] = self.seconds_per_step
        return data


# --------------------------------------------------------------------------------------------- base model

_BASE: dict[str, BaseModel] = {}
_BASE_LOCK = threading.Lock()


def load_base_model(gguf_path: Path | None = None) -> BaseModel:
    """The bundled SmolLM2 GGUF (or `gguf_path`) as a float32 torch model + tokenizer, once per process."""
    path = Path(gguf_path or bundled_gguf_path()).resolve()
    with _BASE_LOCK:
        loaded = _BASE.get(str(path))
        if loaded is not None:
            return loaded
        hub_offline()  # before transformers (and huggingface_hub) are imported: nothing is downloaded
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        started = time.perf_counter()
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # The weights are dequantized plain tensors now; without this, save_pretrained refuses ("quantized").
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        config = model.config
        identity = f"{path.name} ({config.model_type}, {config.num_hidden_layers} layers)"
        loaded = _BASE[str(path)] = BaseModel(model, tokenizer, path, identity, time.perf_counter() - started)
        return loaded


# ------------------------------------------------------------------------------------------------ encoding


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt; the assistant's tokens (with the end-of-turn) otherwise
    truncated: bool


def encode_example(tokenizer: Any, messages: list[dict], max_tokens: int) -> EncodedExample:
    """Render the messages with the model's chat template; loss only on the final assistant message."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training example must end with the assistant's message")
    full = _template_ids(tokenizer, messages, add_generation_prompt=False)
    prompt = _template_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template does not render the prompt as a prefix of the full example")
    labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt) :]
    truncated = len(full) > max_tokens
    return EncodedExample(full[:max_tokens], labels[:max_tokens], truncated)


def _template_ids(tokenizer: Any, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _collate(batch: list[EncodedExample], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return ids, labels, mask


# ------------------------------------------------------------------------------------------------ training


def _batch_loss(model: Any, batch: list[EncodedExample], pad_id: int) -> tuple[Any, int]:
    """Mean cross-entropy over the batch's answer tokens, and how many answer tokens there were."""
    import torch

    ids, labels, mask = _collate(batch, pad_id)
    logits = model(input_ids=ids, attention_mask=mask).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    n_tokens = int((shift_labels != IGNORE_INDEX).sum())
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
    return loss, n_tokens


def _validation_loss(model: Any, examples: list[EncodedExample], batch_size: int, pad_id: int) -> float:
    """Token-weighted mean loss over every validation answer token (nan without validation examples)."""
    import torch

    if not examples:
        return math.nan
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            loss, n = _batch_loss(model, examples[start : start + batch_size], pad_id)
            if n:
                total += float(loss) * n
                count += n
    model.train()
    return total / count if count else math.nan


def train_lora(
    examples: list[list[dict]],
    validation: list[list[dict]],
    point: SweepPoint,
    local: LocalFinetuneSettings,
    out_dir: Path | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    *,
    base: BaseModel | None = None,
    n_threads: int | None = None,
) -> TrainingResult:
    """Train a LoRA adapter for one sweep point on chat-message examples (each ending with the assistant).

    `point` gives n_epochs, batch_size, learning_rate_multiplier, lora_r and lora_alpha; `local` gives base_lr,
    max_seq_tokens, max_steps (0: all epochs), dtype and seed. With `out_dir`, the peft adapter is saved to
    `out_dir/peft_adapter/`. `on_log` receives one dict per step ({"event": "step", ...}) and per validation
    ({"event": "validation", ...}). Raises TrainingDiverged when a loss is NaN or infinite. torch uses
    `n_threads` CPU threads (default: `local.n_threads` if that setting exists and is set, else automatic: the
    share `resources/cpu_share.py` gives, re-read each step) and the previous thread count is restored afterwards.
    """
    import torch

    if not examples:
        raise ValueError(f"sweep point {point.key}: no training examples")
    configured = n_threads or getattr(local, "n_threads", 0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(configured))
    try:
        return _train(examples, validation, point, local, out_dir, on_log, base or load_base_model(), configured)
    finally:
        torch.set_num_threads(previous_threads)


@dataclass
class _TrainingRun:
    """The state of one training run: the model, its optimizer and schedule, and what it has measured so far."""

    model: Any
    optimizer: Any
    scheduler: Any
    learning_rate: float
    steps_per_epoch: int
    total_steps: int
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    train_tokens: int = 0
    train_seconds: float = 0.0
    step: int = 0


def _usable_examples(
    tokenizer: Any, conversations: list[list[dict]], max_tokens: int
) -> tuple[list[EncodedExample], int]:
    """The encoded examples that keep some of their answer after truncation, and how many were truncated."""
    encoded = [encode_example(tokenizer, m, max_tokens) for m in conversations]
    # An example whose answer was cut away entirely has nothing to learn from.
    usable = [e for e in encoded if any(label != IGNORE_INDEX for label in e.labels[1:])]
    return usable, sum(e.truncated for e in encoded)


def _start_run(base: BaseModel, point: SweepPoint, local: LocalFinetuneSettings, n_train: int) -> _TrainingRun:
    """A LoRA copy of the base model with its AdamW optimizer and linear decay to zero over the run's steps."""
    import torch
    from peft import LoraConfig, get_peft_model

    # bfloat16: the frozen base weights in bf16, the LoRA weights (peft's default) and the optimizer in float32
    # (torch.autocast on CPU is far slower).
    work_model = copy.deepcopy(base.model)
    if local.dtype == "bfloat16":
        work_model = work_model.to(torch.bfloat16)
    lora = LoraConfig(
        r=point.lora_r,
        lora_alpha=point.lora_alpha,
        target_modules=LORA_TARGET_MODULES,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(work_model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    learning_rate = local.base_lr * point.learning_rate_multiplier
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(n_train / point.batch_size)
    total_steps = steps_per_epoch * point.n_epochs
    if local.max_steps:
        total_steps = min(total_steps, local.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    return _TrainingRun(model, optimizer, scheduler, learning_rate, steps_per_epoch, total_steps)


def _optimizer_step(
    run: _TrainingRun,
    batch: list[EncodedExample],
    pad_id: int,
    epoch: int,
    point: SweepPoint,
    local: LocalFinetuneSettings,
) -> dict[str, Any]:
    """One optimizer step on `batch`; its log event. Raises TrainingDiverged on a NaN or infinite loss."""
    step_started = time.perf_counter()
    loss, n_answer = _batch_loss(run.model, batch, pad_id)
    value = loss.detach().item()
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"sweep point {point.key}: training loss became {value} at step {run.step + 1} of {run.total_steps} "
            f"(epoch {epoch}, learning rate {run.learning_rate:g} = finetune.local.base_lr "
            f"{local.base_lr:g} x multiplier {point.learning_rate_multiplier:g}); lower the learning rate"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    seconds = time.perf_counter() - step_started
    run.train_seconds += seconds
    run.train_losses.append(value)
    run.train_tokens += sum(len(e.input_ids) for e in batch)
    return {
        "event": "step",
        "step": run.step,
        "total_steps": run.total_steps,
        "epoch": epoch,
        "loss": value,
        "answer_tokens": n_answer,
        "seconds": seconds,
    }


def _validate(
    run: _TrainingRun, val_set: list[EncodedExample], batch_size: int, pad_id: int, point_key: str, epoch: int
) -> dict[str, Any]:
    """The validation loss after the run's current step, recorded; its log event."""
    val = _validation_loss(run.model, val_set, batch_size, pad_id)
    if val_set and not math.isfinite(val):
        raise TrainingDiverged(
            f"sweep point {point_key}: validation loss became {val} after step {run.step} (epoch {epoch})"
        )
    run.val_losses.append(val)
    run.val_steps.append(run.step)
    return {"event": "validation", "step": run.step, "epoch": epoch, "val_loss": val}


def _train(
    examples: list[list[dict]],
    validation: list[list[dict]],
    point: SweepPoint,
    local: LocalFinetuneSettings,
    out_dir: Path | None,
    on_log: Callable[[dict[str, Any]], None] | None,
    base: BaseModel,
    configured_threads: int,
) -> TrainingResult:
    hub_offline()
    import torch

    pad_id = int(base.tokenizer.pad_token_id)
    log = on_log or (lambda _event: None)
    train_set, truncated_train = _usable_examples(base.tokenizer, examples, local.max_seq_tokens)
    val_set, truncated_val = _usable_examples(base.tokenizer, validation, local.max_seq_tokens)
    if not train_set:
        raise ValueError(
            f"sweep point {point.key}: every training example's answer lies beyond "
            f"finetune.local.max_seq_tokens={local.max_seq_tokens}"
        )

    torch.manual_seed(local.seed)
    rng = random.Random(local.seed)
    run = _start_run(base, point, local, len(train_set))
    started = time.perf_counter()
    for epoch in range(1, point.n_epochs + 1):
        order = list(range(len(train_set)))
        rng.shuffle(order)
        for start in range(0, len(order), point.batch_size):
            if run.step >= run.total_steps:
                break
            torch.set_num_threads(resolve_threads(configured_threads))
            batch = [train_set[i] for i in order[start : start + point.batch_size]]
            log(_optimizer_step(run, batch, pad_id, epoch, point, local))
        log(_validate(run, val_set, point.batch_size, pad_id, point.key, epoch))
        if run.step >= run.total_steps:
            break
    run.model.eval()

    result = TrainingResult(
        point_key=point.key,
        learning_rate=run.learning_rate,
        train_losses=run.train_losses,
        val_losses=run.val_losses,
        val_steps=run.val_steps,
        steps=run.step,
        epochs_completed=round(run.step / run.steps_per_epoch, 3),
        stopped_by_max_steps=run.step < run.steps_per_epoch * point.n_epochs,
        seconds=time.perf_counter() - started,
        train_seconds=run.train_seconds,
        n_train=len(train_set),
        n_validation=len(val_set),
        train_tokens=run.train_tokens,
        truncated_examples=truncated_train + truncated_val,
        dtype=local.dtype,
        threads=torch.get_num_threads(),  # the last step's
        base_model=base.identity,
        peft_model=run.model,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        run.model.save_pretrained(str(out_dir / PEFT_ADAPTER_DIR), save_embedding_layers=False)
        write_atomically(out_dir / TRAINING_LOG_FILE, json.dumps(result.log_dict(), indent=2))
    return result


# ------------------------------------------------------------------------------------------------ export


def _permute_rows(weight: Any, n_head: int) -> Any:
    """llama.cpp's row order for rope-rotated projections (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def lora_tensors(peft_model: Any) -> tuple[dict[str, Any], float, int]:
    """{gguf tensor name: float32 numpy array}, alpha and rank of a peft LoRA on a llama model."""
    hub_offline()
    from gguf import MODEL_ARCH, get_tensor_name_map
    from peft.tuners.lora import LoraLayer

    config = peft_model.base_model.model.config
    n_head, n_head_kv = config.num_attention_heads, config.num_key_value_heads
    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    lora_config = peft_model.peft_config["default"]
    if getattr(lora_config, "use_rslora", False) or lora_config.rank_pattern or lora_config.alpha_pattern:
        raise ValueError("only a plain LoRA (one r and alpha for every layer, no rsLoRA) can be exported")
    tensors: dict[str, Any] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in getattr(module, "lora_A", {}):
            continue
        hf_name = name.split("base_model.model.", 1)[-1]  # model.layers.N.self_attn.q_proj
        gguf_base = name_map.get_name(hf_name)
        if gguf_base is None:
            raise ValueError(f"no llama.cpp tensor for {hf_name}")
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()  # (r, in)
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()  # (out, r)
        suffix = hf_name.rsplit(".", 1)[-1]
        # llama.cpp stores q and k with their rows permuted for its rope layout (transformers undoes this when it
        # loads the GGUF), so their B matrices are permuted the same way, as convert_lora_to_gguf.py does.
        if suffix == "q_proj":
            b = _permute_rows(b, n_head)
        elif suffix == "k_proj":
            b = _permute_rows(b, n_head_kv)
        tensors[f"{gguf_base}.weight.lora_a"] = a.copy()
        tensors[f"{gguf_base}.weight.lora_b"] = b.copy()
    if not tensors:
        raise ValueError("the model has no LoRA layers to export")
    return tensors, float(lora_config.lora_alpha), int(lora_config.r)


def export_lora_gguf(peft_model: Any, out_path: Path) -> Path:
    """Write the peft LoRA as a GGUF adapter llama.cpp loads (`Llama(..., lora_path=out_path)`); atomic."""
    import gguf

    tensors, alpha, rank = lora_tensors(peft_model)
    out_path = Path(out_path)
    with atomic_output(out_path) as partial:
        writer = gguf.GGUFWriter(str(partial), arch=GGUF_ARCH)
        try:
            writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            writer.add_name(f"mebot LoRA r={rank} alpha={alpha:g}")
            for name in sorted(tensors, key=_tensor_order):
                writer.add_tensor(name, tensors[name])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out_path


def _tensor_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1, name)


# ------------------------------------------------------------------------------------------------ resource


class ModelStore(dg.ConfigurableResource):
    """Where fine-tuned models live: `<base_dir>/<partition key>/` (adapter.gguf, peft_adapter/, logs, plot)."""

    base_dir: str

    def model_dir(self, key: str) -> Path:
        return model_dir(Path(self.base_dir).expanduser().resolve(), key)
