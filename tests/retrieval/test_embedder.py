"""Embedders: the sentence-transformers backend on a model built here, and the bundled e5 model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.embedders import EmbeddingConfig, model_name_of
from retrieval.embedders.sentence_transformer import SentenceTransformerEmbedder


def test_sentence_transformers_backend_loads_a_local_directory(tiny_embedder, tiny_model_dir: Path) -> None:
    assert tiny_embedder.model_name == "tiny-bert"
    vectors = tiny_embedder.embed_documents(["年假有几天？", "The quick brown fox.", "报销"])
    assert vectors.shape == (3, tiny_embedder.dimension) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Batching and length sorting must not change a text's vector.
    alone = tiny_embedder.embed_documents(["报销"])[0]
    np.testing.assert_allclose(alone, vectors[2], atol=1e-5)
    # Token counts add up (no special tokens), as the splitter's token budget needs.
    assert tiny_embedder.count_tokens("年假有几天") == 5 == 2 * tiny_embedder.count_tokens("年假") + 1
    assert tiny_embedder.count_tokens("") == 0
    assert tiny_embedder.embed_documents([]).shape == (0, tiny_embedder.dimension)


def test_prompts_default_to_the_model_family(tiny_model_dir: Path, tmp_path: Path) -> None:
    e5_named = tmp_path / "multilingual-e5-small"
    e5_named.symlink_to(tiny_model_dir, target_is_directory=True)
    e5 = SentenceTransformerEmbedder(EmbeddingConfig(backend="sentence-transformers", model=str(e5_named)))
    plain = SentenceTransformerEmbedder(
        EmbeddingConfig(backend="sentence-transformers", model=str(tiny_model_dir))
    )
    assert (e5._query_prompt, e5._passage_prompt) == ("query: ", "passage: ")
    assert (plain._query_prompt, plain._passage_prompt) == ("", "")
    # The prompt is really applied: the same text embeds differently as query and as passage.
    assert not np.allclose(e5.embed_query("年假"), e5.embed_documents(["年假"])[0])


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("shibing624/text2vec-base-chinese", "text2vec-base-chinese"),
        ("/models/text2vec-base-chinese/", "text2vec-base-chinese"),
        ("text2vec-base-chinese", "text2vec-base-chinese"),
    ],
)
def test_model_name_is_the_same_for_hub_id_and_local_path(model: str, name: str) -> None:
    assert model_name_of(model) == name


def test_e5_token_count_excludes_specials_and_prompt(e5_embedder) -> None:
    assert e5_embedder.count_tokens("") == 0
    assert 0 < e5_embedder.count_tokens("年假有几天") <= 5


def test_e5_ranks_a_chinese_paraphrase_above_unrelated_text(e5_embedder) -> None:
    query = e5_embedder.embed_query("员工一年可以休几天年假？")
    passages = e5_embedder.embed_documents(
        [
            "公司规定，正式员工每年享有带薪年休假十天。",
            "服务器机房的温度应保持在二十二度左右。",
            "本季度销售额同比增长了百分之十五。",
        ]
    )
    scores = passages @ query
    assert scores.argmax() == 0
    assert scores[0] - scores[1:].max() > 0.03
    assert np.all(scores <= 1.0 + 1e-5) and np.all(scores >= -1.0 - 1e-5)


LONG_ZH = "员工入职满一年后，每年享有十天带薪年假，年假需提前三个工作日在系统中申请。" * 40  # ~1,500 tokens


def test_e5_cuts_every_text_to_its_window_so_long_inputs_cost_one_window(e5_embedder) -> None:
    tail = "完全无关的内容：服务器机房的温度应保持在二十二度左右。" * 500
    # What lies past the model's 512 tokens never reaches it, for queries and passages alike.
    np.testing.assert_array_equal(e5_embedder.embed_query(LONG_ZH), e5_embedder.embed_query(LONG_ZH + tail))
    passages = e5_embedder.embed_documents([LONG_ZH + tail, "报销", LONG_ZH])
    np.testing.assert_array_equal(passages[0], passages[2])
    np.testing.assert_allclose(passages[1], e5_embedder.embed_documents(["报销"])[0], atol=1e-6)
    # The cut keeps as much as fits: a text just under the window is embedded whole.
    short = LONG_ZH[:300]
    assert not np.array_equal(e5_embedder.embed_query(short), e5_embedder.embed_query(short[:-20]))
    # 20,000 characters cost about what one window costs, not forty windows.
    started = time.perf_counter()
    e5_embedder.embed_query(LONG_ZH)
    window = time.perf_counter() - started
    started = time.perf_counter()
    e5_embedder.embed_query((LONG_ZH + tail)[:20_000])
    assert time.perf_counter() - started < 3 * window + 0.5


def test_e5_short_query_is_served_before_a_long_batch_waiting_for_the_engine(e5_embedder) -> None:
    # Both engine handles busy with long batches: a short query still gets the next free handle.
    batch = [LONG_ZH[i:] for i in range(24)]
    threads = [threading.Thread(target=e5_embedder.embed_documents, args=(batch,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    started = time.perf_counter()
    e5_embedder.embed_query("年假有几天？")
    waited = time.perf_counter() - started
    for thread in threads:
        thread.join()
    assert waited < 3.0, f"a short query waited {waited:.2f} s behind long batches"


def test_sentence_transformers_inputs_are_cut_to_the_model_limit(tiny_embedder) -> None:
    limit = tiny_embedder._model.max_seq_length
    assert limit and limit <= 512
    words = " ".join(f"w{i}" for i in range(4 * limit))
    np.testing.assert_allclose(
        tiny_embedder.embed_query(words), tiny_embedder.embed_query(words + " tail" * 2000), atol=1e-6
    )
