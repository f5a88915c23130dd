"""SFT data, LoRA/QLoRA training, merge and evaluation (filled by the fine-tuning issue)."""
