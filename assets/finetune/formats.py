"""The one format of fine-tuning examples, used to write training files, to train, and to ask a fine-tuned model.

Training and inference must see the same text, so every stage builds its messages here: system (the persona),
user (the question), assistant (the passage + `finetune.completion_stop`); a fine-tuned model is asked with the
same system and user messages and generation stops at the stop sequence."""

from collections.abc import Callable

from mebot.resources.chat import ChatClient, ChatResult
from mebot.resources.settings import ChatModelSettings, Settings


def system_message(settings: Settings) -> str:
    """finetune.system_prompt for the persona, with persona.description after it when there is one."""
    persona = settings.persona
    prompt = settings.finetune.system_prompt.format(persona_name=persona.name)
    return f"{prompt} {persona.description.strip()}" if persona.description.strip() else prompt


def chat_example(settings: Settings, question: str, answer: str | None = None) -> list[dict[str, str]]:
    """Messages for one example; without `answer`, the prompt a fine-tuned model is asked with."""
    messages = [
        {"role": "system", "content": system_message(settings)},
        {"role": "user", "content": question},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer + settings.finetune.completion_stop})
    return messages


def strip_stop(text: str, settings: Settings) -> str:
    """The answer without the stop sequence (llama.cpp stops before it; some servers include it)."""
    return text.split(settings.finetune.completion_stop, 1)[0].strip()


# The end of an assistant turn in the bundled GGUF's chat template (ChatML): a model that writes it as text
# instead of ending the turn must stop there too.
CHAT_TEMPLATE_END = "<|im_end|>"


def answer_stops(settings: Settings) -> list[str]:
    """Where a fine-tuned answer ends: the training completion's stop, and the chat template's end of turn."""
    return [settings.finetune.completion_stop, CHAT_TEMPLATE_END]


def answer_params(chat: ChatClient, settings: Settings) -> dict:
    """`complete` arguments of a fine-tuned answer: its own temperature and token limit (finetune.answer_*), the
    stop sequences, and repetition control (llama.cpp's repeat_penalty, an OpenAI-compatible server's
    frequency_penalty) so a model that learned little does not repeat one sentence until the limit."""
    finetune = settings.finetune
    params: dict = {
        "temperature": finetune.answer_temperature,
        "max_tokens": finetune.answer_max_tokens,
        "stop": answer_stops(settings),
    }
    if chat.provider == "llama_cpp":
        params["repeat_penalty"] = finetune.answer_repeat_penalty
        params["repeat_last_n"] = finetune.answer_repeat_last_n
    else:
        params["frequency_penalty"] = finetune.answer_frequency_penalty
    return params


def ask_finetuned(
    chat: ChatClient, settings: Settings, question: str, on_token: Callable[[str], None] | None = None
) -> tuple[str, ChatResult]:
    """Ask a fine-tuned model (a ChatClient with its adapter or model id) in its training format; `on_token` gets
    the answer's pieces as they are generated."""
    result = chat.complete(chat_example(settings, question), **answer_params(chat, settings), on_token=on_token)
    return strip_stop(result.text, settings), result


def adapter_chat_settings(settings: Settings) -> ChatModelSettings:
    """The chat model a local LoRA adapter runs on: the bundled GGUF it was trained on, whatever models.chat says
    (models.chat itself when that is the bundled model on llama.cpp)."""
    chat = settings.models.chat
    return chat if chat.provider == "llama_cpp" and not chat.gguf_path else ChatModelSettings()
