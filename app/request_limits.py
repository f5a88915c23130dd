"""The most one request may carry, the same through every door (the HTTP API, the OpenAI-compatible
face, MCP); docs/security.md, "Request limits", lists them."""

# A longer field is refused with 422 before any work. Texts reaching the embedding model are also cut to
# its window, so these bound the rest: tokenizing, the prompt, the JSON itself.
MAX_QUERY_CHARS = 4000
MAX_QUESTION_CHARS = 8000
MAX_TURN_CHARS = 20_000
MAX_HISTORY_TURNS = 50
MAX_HISTORY_CHARS = 100_000  # all earlier turns together (chat `history`, the earlier `messages`)
MAX_MESSAGES = 100
MAX_MESSAGE_CHARS = 20_000
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit, which clients batch to
MAX_EMBEDDING_CHARS = 20_000
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 200
MAX_NAME_CHARS = 1000  # a model, adapter or knowledge-base name, a Milvus URI
