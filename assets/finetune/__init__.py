"""Group `finetune`: training files in the one example format (`finetune_dataset`) and one fine-tuned model per
point of the sweep (`finetuned_models`, local LoRA or an OpenAI job)."""
