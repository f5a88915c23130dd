"""Generation backends, chat templates, prompts and the grounded answerer (filled by the llm issue)."""
