"""Tiny random models built from configs, saved to a directory and loaded back like a user's model."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

from llm.types import Generation, GenerationParams, Message, TextStream, Usage

CORPUS = [
    "员工每年享有带薪年假，工作满一年后年假为五天，满十年为十天。",
    "报销申请需要在费用发生后三十天内提交，由部门经理审批。",
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge base question answering finds the right chunk and cites it.",
    "台北101大樓高度為508公尺，曾是世界最高的建築。",
    "服务器每天凌晨两点自动备份数据库。",
]


def train_wordpiece(directory: Path, vocab_size: int = 400):
    """Return a BERT-style fast tokenizer trained on a small Chinese and English corpus, saved in `directory`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=128)
    fast.save_pretrained(directory)
    return fast


def tiny_bert_config(vocab_size: int, hidden_size: int, **extra: object):
    """Return the config of a two-layer BERT of `hidden_size` over a vocabulary of `vocab_size`."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=128,
        **extra,
    )


def build_tiny_bert_sentence_transformer(directory: Path, hidden_size: int = 32) -> Path:
    """Return `directory` holding a random tiny BERT saved as a sentence-transformers model (mean pooling)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import BertModel

    torch.manual_seed(0)
    bert_dir = directory / "bert"
    tokenizer = train_wordpiece(bert_dir)
    BertModel(tiny_bert_config(len(tokenizer), hidden_size)).save_pretrained(bert_dir)
    transformer = modules.Transformer(str(bert_dir), max_seq_length=128)
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, modules.Normalize()]).save(str(directory))
    return directory


def build_tiny_cross_encoder(directory: Path, hidden_size: int = 32) -> Path:
    """Return `directory` holding a random tiny BERT with one output (a sentence-transformers CrossEncoder)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = train_wordpiece(directory)
    BertForSequenceClassification(
        tiny_bert_config(len(tokenizer), hidden_size, num_labels=1)
    ).save_pretrained(directory)
    return directory


CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_byte_level_bpe(directory: Path, vocab_size: int = 600):
    """Return a Qwen-style byte-level BPE fast tokenizer with ChatML specials and chat template, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=1024,
    )
    fast.save_pretrained(directory)
    return fast


def build_tiny_causal_lm(directory: Path, architecture: str = "qwen2", seed: int = 0) -> Path:
    """Return `directory` holding a random tiny Qwen2 or Llama chat model with a ChatML tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tokenizer = train_byte_level_bpe(directory)
    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model_class(config).save_pretrained(directory)
    return directory


def build_random_lora_adapter(model_dir: Path, directory: Path, seed: int) -> Path:
    """Return `directory` holding a random (non-zero) LoRA adapter for the model in `model_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    peft_model.save_pretrained(directory)
    return directory


def build_trainable_lm(directory: Path, architecture: str) -> Path:
    """A tiny random Qwen2 or Llama whose output head is scaled up: a random head of std 0.02 after RMSNorm
    caps every logit near 0.6, so no training could make a reply likely; a trained model's head is larger."""
    import torch
    from transformers import AutoModelForCausalLM

    build_tiny_causal_lm(directory, architecture)
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    model.save_pretrained(directory)
    return directory


class ScriptedModel:
    """A chat model that replies with a fixed text and remembers the prompts it was given."""

    name = "scripted"
    context_window = 4096

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[list[Message]] = []

    def count_tokens(self, text: str) -> int:
        return len(text)

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        return sum(len(m.content) + 4 for m in messages)

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        return self.stream(messages, params).read()

    def stream(self, messages: list[Message], params: GenerationParams) -> TextStream:
        self.prompts.append(messages)

        def deltas() -> Generator[str, None, Generation]:
            for i in range(0, len(self.reply), 4):
                yield self.reply[i : i + 4]
            return Generation(self.reply, "stop", Usage(self.count_prompt_tokens(messages), len(self.reply)))

        return TextStream(deltas())

    def close(self) -> None:
        pass
