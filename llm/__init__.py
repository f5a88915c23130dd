"""Generation backends, chat templates, the QA prompt and the grounded answerer."""

from llm.answerer import Answer, Answerer, AnswerOptions, AnswerStream, Citation, Timings
from llm.backends import load_chat_model
from llm.config import ExtractiveConfig, LLMConfig, OpenAIConfig
from llm.errors import LLMError, ModelBusy, ModelLoadError, ModelUnavailable, PromptTooLong, UnknownAdapter
from llm.extractive import ExtractiveReader
from llm.followup import FollowupConfig, Searched, search_turn
from llm.prompt import Prompt, PromptBuilder, PromptConfig
from llm.templates import TEMPLATES, template_for
from llm.types import BASE_MODEL, ChatModel, Generation, GenerationParams, Message, TextStream, Usage

__all__ = [
    "BASE_MODEL",
    "TEMPLATES",
    "Answer",
    "AnswerOptions",
    "AnswerStream",
    "Answerer",
    "ChatModel",
    "Citation",
    "ExtractiveConfig",
    "ExtractiveReader",
    "FollowupConfig",
    "Generation",
    "GenerationParams",
    "LLMConfig",
    "LLMError",
    "Message",
    "ModelBusy",
    "ModelLoadError",
    "ModelUnavailable",
    "OpenAIConfig",
    "Prompt",
    "PromptBuilder",
    "PromptConfig",
    "PromptTooLong",
    "Searched",
    "TextStream",
    "Timings",
    "UnknownAdapter",
    "Usage",
    "load_chat_model",
    "search_turn",
    "template_for",
]
