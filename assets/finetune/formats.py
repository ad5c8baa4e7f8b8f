"""The one format of fine-tuning examples, used to write training files, to train, and to ask a fine-tuned model.

Training and inference must see the same text, so every stage builds its messages here:
- chat format: system (the persona), user (the question), assistant (the passage + `finetune.completion_stop`);
- legacy prompt/completion format (OpenAI's original fine-tuning files): `QUESTION: <q>` + separator, and
  " <passage>" + stop.
A fine-tuned model is asked with the same system and user messages and generation stops at the stop sequence.
"""

from mebot.resources.chat import ChatClient, ChatResult
from mebot.resources.settings import ChatModelSettings, Settings


def system_message(settings: Settings) -> str:
    return settings.finetune.system_prompt.format(persona_name=settings.persona.name)


def chat_example(settings: Settings, question: str, answer: str | None = None) -> list[dict[str, str]]:
    """Messages for one example; without `answer`, the prompt a fine-tuned model is asked with."""
    messages = [
        {"role": "system", "content": system_message(settings)},
        {"role": "user", "content": question},
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer + settings.finetune.completion_stop})
    return messages


def legacy_example(settings: Settings, question: str, answer: str) -> dict[str, str]:
    return {
        "prompt": f"QUESTION: {question}{settings.finetune.prompt_separator}",
        "completion": f" {answer}{settings.finetune.completion_stop}",
    }


def strip_stop(text: str, settings: Settings) -> str:
    """The answer without the stop sequence (llama.cpp stops before it; some servers include it)."""
    return text.split(settings.finetune.completion_stop, 1)[0].strip()


def ask_finetuned(chat: ChatClient, settings: Settings, question: str) -> tuple[str, ChatResult]:
    """Ask a fine-tuned model (a ChatClient with its adapter or model id) in its training format."""
    result = chat.complete(
        chat_example(settings, question),
        temperature=settings.rag.temperature,
        max_tokens=settings.rag.max_tokens,
        stop=[settings.finetune.completion_stop],
    )
    return strip_stop(result.text, settings), result


def adapter_chat_settings(settings: Settings) -> ChatModelSettings:
    """The chat model a local LoRA adapter runs on: the bundled GGUF it was trained on, whatever models.chat says
    (models.chat itself when that is the bundled model on llama.cpp)."""
    chat = settings.models.chat
    return chat if chat.provider == "llama_cpp" and not chat.gguf_path else ChatModelSettings()
