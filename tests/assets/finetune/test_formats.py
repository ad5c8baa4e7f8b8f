"""How a fine-tuned model is asked (assets/finetune/formats.py): its own temperature and token limit, the stop
sequences (the training completion's and the chat template's end) and repetition control per provider."""

from mebot.assets.finetune.formats import CHAT_TEMPLATE_END, answer_params, ask_finetuned, chat_example
from mebot.resources.settings import ChatModelSettings, Settings
from tests.fakes import FakeChat


def settings_with(**finetune) -> Settings:
    settings = Settings()
    return settings.model_copy(update={"finetune": settings.finetune.model_copy(update=finetune)})


def test_answer_params_are_the_finetune_settings_not_rag():
    settings = settings_with(answer_temperature=0.7, answer_max_tokens=99, answer_repeat_penalty=1.2)
    local = FakeChat(ChatModelSettings(provider="llama_cpp"))
    assert answer_params(local, settings) == {
        "temperature": 0.7,
        "max_tokens": 99,
        "stop": [" END", CHAT_TEMPLATE_END],
        "repeat_penalty": 1.2,
        "repeat_last_n": 256,
    }
    remote = FakeChat(ChatModelSettings(provider="openai", model="ft:gpt-4o-mini:me"))
    params = answer_params(remote, settings_with(answer_frequency_penalty=0.4))
    assert params["frequency_penalty"] == 0.4 and "repeat_penalty" not in params and "repeat_last_n" not in params
    assert settings.rag.temperature != 0.7 and settings.rag.max_tokens != 99  # nothing borrowed from rag.*


def test_ask_finetuned_sends_the_training_format_and_strips_the_stop():
    settings = Settings()
    model = FakeChat(ChatModelSettings(), responder=lambda messages, params, client: "I bake rye bread. END more")
    answer, result = ask_finetuned(model, settings, "What do you bake?")
    assert answer == "I bake rye bread."
    messages, params = model.calls[0]
    assert messages == chat_example(settings, "What do you bake?")
    assert params["stop"] == [" END", CHAT_TEMPLATE_END] and params["repeat_penalty"] == 1.1
    assert params["temperature"] == settings.finetune.answer_temperature
    assert params["max_tokens"] == settings.finetune.answer_max_tokens


def test_the_persona_description_follows_the_system_prompt_in_training_and_asking():
    settings = Settings().model_copy(
        update={
            "persona": Settings().persona.model_copy(update={"name": "Ada", "description": "Writes about engines."})
        }
    )
    trained, asked = chat_example(settings, "Q?", "A."), chat_example(settings, "Q?")
    assert (
        trained[0]
        == asked[0]
        == {
            "role": "system",
            "content": settings.finetune.system_prompt.format(persona_name="Ada") + " Writes about engines.",
        }
    )
    assert chat_example(Settings(), "Q?")[0]["content"] == Settings().finetune.system_prompt.format(
        persona_name=Settings().persona.name
    )  # no description: the system prompt alone
