"""Local LoRA training and its GGUF export: real training on tiny data, a real llama.cpp load of the adapter.

The base model loads once for the module (≈ 30-60 s: transformers dequantizes the GGUF and reads its tokenizer).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from mebot.assets.finetune.formats import chat_example
from mebot.resources import lora
from mebot.resources.chat import bundled_gguf_path, chat_client
from mebot.resources.lora import (
    TrainingDiverged,
    encode_example,
    export_lora_gguf,
    load_base_model,
    train_lora,
)
from mebot.resources.settings import ChatModelSettings, LocalFinetuneSettings, Settings, SweepPoint
from tests.helpers import FACTS

pytestmark = pytest.mark.full  # the real base model: transformers, torch, llama.cpp

SETTINGS = Settings()


def examples(pairs=FACTS) -> list[list[dict]]:
    return [chat_example(SETTINGS, q, a) for q, a in pairs]


@pytest.fixture(scope="module")
def base():
    return load_base_model()


@pytest.fixture(scope="module")
def memorised(base, tmp_path_factory):
    """An adapter trained hard on four facts (same batch every step), exported to GGUF."""
    out = tmp_path_factory.mktemp("lora")
    point = SweepPoint(n_epochs=12, batch_size=4, learning_rate_multiplier=1.0, lora_r=8, lora_alpha=16)
    local = LocalFinetuneSettings(base_lr=3e-3, max_seq_tokens=96, max_steps=12, seed=1)
    events: list[dict] = []
    result = train_lora(examples(FACTS[:4]), examples(FACTS[4:6]), point, local, out, events.append, base=base)
    adapter = export_lora_gguf(result.peft_model, out / "adapter.gguf")
    return result, adapter, events, out


def test_encoding_puts_the_loss_on_the_answer_only(base):
    messages = examples()[0]
    encoded = encode_example(base.tokenizer, messages, max_tokens=512)
    answer_ids = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != lora.IGNORE_INDEX]
    answer = base.tokenizer.decode(answer_ids)
    assert answer.startswith(FACTS[0][1]) and "END" in answer and "<|im_end|>" in answer
    assert FACTS[0][0] not in answer and "<|im_start|>assistant" not in answer
    prompt = base.tokenizer.decode(encoded.input_ids[: encoded.labels.index(next(x for x in encoded.labels if x >= 0))])
    assert prompt.endswith("<|im_start|>assistant\n") and FACTS[0][0] in prompt
    short = encode_example(base.tokenizer, messages, max_tokens=20)
    assert short.truncated and len(short.input_ids) == len(short.labels) == 20


def test_lora_trains_with_falling_loss_and_records_train_and_validation_losses(memorised):
    result, _adapter, events, out = memorised
    assert result.steps == 12 and len(result.train_losses) == 12
    assert all(math.isfinite(v) for v in result.train_losses)
    # The same four examples every step: the loss must fall clearly.
    assert result.train_losses[-1] < 0.5 * result.train_losses[0], result.train_losses
    assert len(result.val_losses) == 12 and result.val_steps == list(range(1, 13))
    assert all(math.isfinite(v) for v in result.val_losses)
    assert sum(e["event"] == "step" for e in events) == 12
    assert result.learning_rate == pytest.approx(3e-3)
    assert result.seconds_per_step > 0 and result.n_train == 4 and result.n_validation == 2
    assert (out / "peft_adapter" / "adapter_config.json").is_file()
    assert (out / "training_log.json").is_file()


def test_exported_gguf_has_llama_cpp_lora_layout(memorised, base):
    _result, adapter, _events, _out = memorised
    reader = GGUFReader(str(adapter))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0)
    tensors = {t.name: [int(n) for n in t.shape] for t in reader.tensors}  # GGUF order: ne0 (columns) first
    layers = base.model.config.num_hidden_layers
    assert len(tensors) == layers * 4 * 2
    # llama.cpp: a.ne = [in, r], b.ne = [r, out], out/in as the base tensor (k/v project to 3 kv heads x 64).
    assert tensors["blk.0.attn_q.weight.lora_a"] == [576, 8]
    assert tensors["blk.0.attn_q.weight.lora_b"] == [8, 576]
    assert tensors["blk.29.attn_k.weight.lora_b"] == [8, 192]
    assert tensors["blk.7.attn_v.weight.lora_a"] == [576, 8]
    assert tensors["blk.3.attn_output.weight.lora_b"] == [8, 576]


def _llama_logits(tokens: list[int], lora_path: Path | None) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(bundled_gguf_path()),
        lora_path=str(lora_path) if lora_path else None,
        n_ctx=512,
        n_threads=1,
        logits_all=True,
        verbose=False,
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    finally:
        llm.close()


def test_llama_cpp_applies_the_adapter_as_torch_does(memorised, base):
    """The adapter's effect on the next-token logits in llama.cpp matches its effect in torch. A wrong tensor
    layout (e.g. q/k rows not permuted to llama.cpp's rope order) still loads and still changes the output, but
    moves the logits differently."""
    result, adapter, _events, _out = memorised
    prompt = chat_example(SETTINGS, FACTS[0][0])
    text = base.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    tokens = (
        base.tokenizer(text, add_special_tokens=False)["input_ids"]
        + base.tokenizer("My sourdough", add_special_tokens=False)["input_ids"]
    )
    ids = torch.tensor([tokens])
    with torch.no_grad():
        torch_ft = result.peft_model(input_ids=ids).logits[0, -1].double().numpy()
        with result.peft_model.disable_adapter():
            torch_base = result.peft_model(input_ids=ids).logits[0, -1].double().numpy()
    llama_base = _llama_logits(tokens, None)
    llama_ft = _llama_logits(tokens, adapter)
    torch_delta, llama_delta = torch_ft - torch_base, llama_ft - llama_base
    # a real change, larger than the difference between torch and llama.cpp on the base model
    assert np.linalg.norm(torch_delta) > max(1.0, np.linalg.norm(torch_base - llama_base))
    assert np.corrcoef(torch_delta, llama_delta)[0, 1] > 0.95
    assert int(np.argmax(llama_ft)) == int(np.argmax(torch_ft))


def test_chat_client_answers_differently_with_the_adapter(memorised):
    _result, adapter, _events, _out = memorised
    chat = ChatModelSettings(n_ctx=1024, n_threads=1)
    plain = chat_client(chat)
    tuned = chat_client(chat, lora_path=str(adapter))
    prompt = chat_example(SETTINGS, FACTS[0][0])
    base_answer = plain.complete(prompt, temperature=0.0, max_tokens=24, stop=[" END"]).text
    tuned_answer = tuned.complete(prompt, temperature=0.0, max_tokens=24, stop=[" END"]).text
    assert tuned.identity != plain.identity and "lora=adapter.gguf" in tuned.identity
    assert tuned_answer != base_answer
    assert "Bartholomew" in tuned_answer, (base_answer, tuned_answer)  # it learned the trained answer


def test_a_huge_learning_rate_diverges_with_an_error_naming_step_and_point(base):
    point = SweepPoint(n_epochs=3, batch_size=4, learning_rate_multiplier=1e6, lora_r=8, lora_alpha=16)
    local = LocalFinetuneSettings(base_lr=1.0, max_seq_tokens=64, max_steps=6)
    with pytest.raises(
        TrainingDiverged, match=r"sweep point e3-b4-lr1e\+06: training loss became (nan|inf) at step \d"
    ):
        train_lora(examples(FACTS[:4]), [], point, local, None, base=base)


def test_an_injected_infinite_loss_raises_training_diverged(base, monkeypatch):
    real = lora._batch_loss
    calls = {"n": 0}

    def flaky(model, batch, pad_id):
        loss, n = real(model, batch, pad_id)
        calls["n"] += 1
        return (loss * float("inf") if calls["n"] == 2 else loss), n

    monkeypatch.setattr(lora, "_batch_loss", flaky)
    point = SweepPoint(n_epochs=2, batch_size=2, learning_rate_multiplier=0.5, lora_r=4, lora_alpha=8)
    local = LocalFinetuneSettings(max_seq_tokens=64, max_steps=3)
    with pytest.raises(TrainingDiverged, match=r"e2-b2-lr0.5-r4-a8: training loss became inf at step 2 of 3"):
        train_lora(examples(FACTS[:4]), [], point, local, None, base=base)


def test_training_does_not_touch_the_cached_base_model(base):
    before = {name: p.detach().clone() for name, p in base.model.named_parameters()}
    point = SweepPoint(n_epochs=1, batch_size=2, learning_rate_multiplier=1.0, lora_r=8, lora_alpha=16)
    local = LocalFinetuneSettings(base_lr=3e-3, max_seq_tokens=64, max_steps=2, seed=3)
    trained = train_lora(examples(FACTS[:4]), [], point, local, None, base=base)  # two optimizer steps
    assert trained.train_losses  # it did train
    after = dict(base.model.named_parameters())
    assert after.keys() == before.keys()  # no LoRA layers left in the shared model
    assert all(torch.equal(weight, after[name]) for name, weight in before.items())  # and no weight changed
    assert not any(p.requires_grad for p in base.model.parameters())
    assert load_base_model() is base  # the next sweep point reuses it


def test_no_training_examples_is_a_clear_error(base):
    point = SweepPoint(n_epochs=1, batch_size=1, learning_rate_multiplier=1.0, lora_r=8, lora_alpha=16)
    with pytest.raises(ValueError, match="no training examples"):
        train_lora([], [], point, LocalFinetuneSettings(), None, base=base)
