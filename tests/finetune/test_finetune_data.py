"""Fine-tuning data: readers, the dataset registry, converters, tables, splits, RAG records and their CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from finetune.conversation import Conversation, Preference
from finetune.convert import convert_file, parse_ratios, split_file, split_records, split_sizes, to_record
from finetune.errors import DatasetError, FinetuneError
from finetune.rag import Passage, RagOptions, RagSample, build_rag_conversations, read_rag_samples
from finetune.readers import read_file
from finetune.records import Malformed, NoValidRecord
from finetune.registry import load_dataset, read_dataset, read_dataset_info
from finetune.tables import read_table, table_conversations, table_rows, write_table
from llm.prompt import PromptBuilder, PromptConfig
from llm.types import Message
from retrieval import SearchHit

S, U, A, T = "system", "user", "assistant", "observation"  # T: a tool result


def conversation(*pairs: tuple[str, str], source: str = "") -> Conversation:
    return Conversation(tuple(Message(role, content) for role, content in pairs), source)


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        lines = [line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in data]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# --- readers -------------------------------------------------------------------------------------

ALPACA = [
    {"instruction": "年假有几天？", "input": "", "output": "五天。"},
    {
        "instruction": "翻译成英文",
        "input": "你好",
        "output": "Hello",
        "system": "你是翻译。",
        "history": [["在吗？", "在的。"]],
    },
]


def test_alpaca_joins_instruction_and_input_and_keeps_system_and_history(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", ALPACA)
    examples, report = read_file(path)
    assert examples == [
        conversation((U, "年假有几天？"), (A, "五天。"), source=f"{path}#0"),
        conversation(
            (S, "你是翻译。"),
            (U, "在吗？"),
            (A, "在的。"),
            (U, "翻译成英文\n你好"),
            (A, "Hello"),
            source=f"{path}#1",
        ),
    ]
    assert (report.valid, report.skipped) == (2, [])


ALPACA_BAD = [
    {"instruction": "ok", "output": "fine"},
    {"input": "", "output": "no question"},
    {"instruction": "no answer"},
    {"instruction": "q", "output": 42},
    {"instruction": "q", "output": "a", "history": [["only one"]]},
    {"instruction": "q", "output": "a", "history": "not a list"},
    ["not", "an", "object"],
]


def test_malformed_alpaca_records_are_skipped_and_counted_with_file_and_index(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", ALPACA_BAD)
    examples, report = read_file(path, "alpaca")
    assert [e.source for e in examples] == [f"{path}#0"]
    assert report.valid == 1
    assert [str(s) for s in report.skipped] == [
        f"{path}: record 1: missing instruction (column 'instruction')",
        f"{path}: record 2: missing output (column 'output')",
        f"{path}: record 3: 'output' is a number, not a string",
        f"{path}: record 4: 'history' item 0 is not a [question, answer] pair of strings",
        f"{path}: record 5: 'history' is a string, not a list of [question, answer] pairs",
        f"{path}: record 6: is a list, not a JSON object",
    ]
    assert report.reasons()["missing output (column 'output')"] == 1


def test_strict_mode_raises_on_the_first_malformed_record(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", ALPACA_BAD)
    with pytest.raises(DatasetError) as error:
        read_file(path, "alpaca", strict=True)
    assert str(error.value) == f"{path}: record 1: missing instruction (column 'instruction')"


def test_a_file_with_no_valid_record_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "none.json", ALPACA_BAD[1:3])
    with pytest.raises(NoValidRecord) as error:
        read_file(path, "alpaca")
    assert str(error.value) == (
        f"{path}: no valid record (2 malformed; the first: {path}: record 0: missing instruction "
        "(column 'instruction'))"
    )
    assert len(error.value.report.skipped) == 2
    with pytest.raises(NoValidRecord, match="holds no records"):
        read_file(write(tmp_path / "empty.json", []))


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken.json: not valid JSON: "):
        read_file(tmp_path / "broken.json")
    with pytest.raises(DatasetError, match=r"object.json: expected a JSON list of records, found a object"):
        read_file(write(tmp_path / "object.json", {"instruction": "q"}))
    with pytest.raises(DatasetError, match=r"missing.json: no such file"):
        read_file(tmp_path / "missing.json")
    with pytest.raises(DatasetError, match=r"data.parquet: cannot read .parquet; use .json, .jsonl or .csv"):
        read_file(tmp_path / "data.parquet")
    with pytest.raises(DatasetError, match=r"record 0: cannot tell the format from its keys \(text\)"):
        read_file(write(tmp_path / "unknown.json", [{"text": "x"}]))


def test_jsonl_lines_keep_their_index_past_a_line_that_is_not_json(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [ALPACA[0], "{not json", ALPACA[0]])
    examples, report = read_file(path)
    assert [e.source for e in examples] == [f"{path}#0", f"{path}#2"]
    [skipped] = report.skipped
    assert (skipped.index, skipped.reason.startswith("not valid JSON: ")) == (1, True)


SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "查一下北京天气"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "北京"}}'},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "北京 20 度。"},
        ],
        "system": "你是助手。",
    },
    {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    },
]


def test_sharegpt_roles_function_calls_observations_and_system(tmp_path: Path) -> None:
    path = write(tmp_path / "s.json", SHAREGPT)
    examples, _ = read_file(path)
    assert [e.messages for e in examples] == [
        conversation(
            (S, "你是助手。"),
            (U, "查一下北京天气"),
            (A, '{"name": "weather", "arguments": {"city": "北京"}}'),
            (T, '{"temp": 20}'),
            (A, "北京 20 度。"),
        ).messages,
        conversation((S, "sys"), (U, "q"), (A, "a")).messages,
    ]


def test_openai_messages_are_read_as_sharegpt(tmp_path: Path) -> None:
    records = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "tool", "content": "r"},
                {"role": "assistant", "content": "b"},
            ]
        }
    ]
    examples, _ = read_file(write(tmp_path / "o.jsonl", records))
    assert examples[0].messages == conversation((S, "s"), (U, "q"), (A, "a"), (T, "r"), (A, "b")).messages


def test_malformed_sharegpt_records_name_the_message(tmp_path: Path) -> None:
    def turn(role: str, value: object) -> dict:
        return {"from": role, "value": value}

    records = [
        {"conversations": [turn("human", "q"), turn("gpt", "a")]},
        {"conversations": [turn("gpt", "a"), turn("human", "q")]},
        {"conversations": [turn("human", "q"), turn("gpt", "a"), turn("human", "q2")]},
        {"conversations": [turn("human", "q"), turn("gpt", ["a"])]},
        {"conversations": [turn("human", "q"), turn("bot", "a")]},
        {"conversations": [turn("human", "q"), turn("system", "s")]},
        {"conversations": [turn("human", "q"), turn("human", "q")]},
        {"conversations": [{"role": "user", "content": "q"}]},
        {"conversations": []},
        {"conversations": "q"},
        {"messages_elsewhere": []},
    ]
    path = write(tmp_path / "s.json", records)
    _, report = read_file(path, "sharegpt")
    assert [f"{s.index}: {s.reason}" for s in report.skipped] == [
        "1: message 0 should be from user or observation ('human'/'observation'), not 'gpt'",
        "2: odd number of messages (3): the last must be the assistant's reply",
        "3: message 1: 'value' is a list, not a string",
        "4: message 1 has unknown role \"bot\" (known: 'human', 'gpt', 'function_call', 'observation', 'system')",
        "5: message 1: a system message may only come first",
        "6: message 1 should be from assistant ('gpt'/'function_call'), not 'human'",
        "7: message 0 is not an object with 'from' and 'value'",
        "8: no messages",
        "9: column 'conversations' is a string, not a list of messages",
        "10: missing messages (column 'conversations')",
    ]


def test_xtuner_conversations_and_their_errors(tmp_path: Path) -> None:
    records = [
        {"conversation": [{"system": "s", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]},
        {"conversation": [{"input": "q", "output": ""}]},
        {"conversation": [{"input": "q", "output": "a"}, {"system": "other", "input": "q", "output": "a"}]},
        {"conversation": [{"input": 1, "output": "a"}]},
        {"conversation": ["q"]},
        {"conversation": []},
    ]
    path = write(tmp_path / "x.json", records)
    examples, report = read_file(path)
    assert examples[0].messages == conversation((S, "s"), (U, "q1"), (A, "a1"), (U, "q2"), (A, "a2")).messages
    assert [f"{s.index}: {s.reason}" for s in report.skipped] == [
        "1: turn 0: missing 'output'",
        "2: turn 1: a system prompt may only come in the first turn",
        "3: turn 0: 'input' is a number, not a string",
        "4: turn 0 is a string, not an object with 'input' and 'output'",
        "5: missing 'conversation' (a non-empty list of turns)",
    ]


def test_preference_data_in_both_alpaca_layouts_and_sharegpt(tmp_path: Path) -> None:
    alpaca = [
        {"instruction": "q", "chosen": "good", "rejected": "bad"},
        {"instruction": "q", "output": ["better", "worse"]},
        {"instruction": "q", "output": ["only one"]},
        {"instruction": "q", "chosen": "good"},
    ]
    path = write(tmp_path / "p.json", alpaca)
    examples, report = read_file(path, "alpaca", ranking=True)
    assert examples == [
        Preference((Message(U, "q"),), "good", "bad", f"{path}#0"),
        Preference((Message(U, "q"),), "better", "worse", f"{path}#1"),
    ]
    assert [s.reason for s in report.skipped] == [
        "preference data needs 'chosen' and 'rejected', or 'output' as [better, worse]",
        "missing 'chosen' or 'rejected' reply",
    ]
    sharegpt = [
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "x"}},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "chosen": {}},
    ]
    path = write(tmp_path / "p2.json", sharegpt)
    examples, report = read_file(path)  # ranking detected by the `chosen` key
    assert examples == [Preference((Message(U, "q"),), "good", "bad", f"{path}#0")]
    assert [s.reason for s in report.skipped] == [
        "'chosen' is not an assistant message with 'from' and 'value'",
        "even number of messages (2): a preference prompt ends with the user",
    ]


# --- registry ------------------------------------------------------------------------------------


def registry_dir(tmp_path: Path, info: dict, files: dict[str, object]) -> Path:
    for name, data in files.items():
        write(tmp_path / name, data)
    write(tmp_path / "dataset_info.json", info)
    return tmp_path


def test_dataset_info_columns_and_tags_map_custom_keys(tmp_path: Path) -> None:
    alpaca = [{"q": "问", "ctx": "补充", "a": "答", "sys": "系统", "hist": [["前问", "前答"]]}]
    sharegpt = [
        {
            "dialog": [
                {"speaker": "sys", "text": "s"},
                {"speaker": "me", "text": "q"},
                {"speaker": "bot", "text": "a"},
                {"speaker": "tool", "text": "r"},
                {"speaker": "bot", "text": "b"},
            ]
        }
    ]
    old_style = [{"conversations": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]}]
    info = {
        "custom_alpaca": {
            "file_name": "a.json",
            "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys", "history": "hist"},
        },
        "custom_sharegpt": {
            "file_name": "s.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog"},
            "tags": {
                "role_tag": "speaker",
                "content_tag": "text",
                "user_tag": "me",
                "assistant_tag": "bot",
                "observation_tag": "tool",
                "system_tag": "sys",
            },
        },
        "old_style": {
            "file_name": "o.json",
            "formatting": "sharegpt",
            "columns": {"role": "role", "content": "content"},
        },
    }
    root = registry_dir(tmp_path, info, {"a.json": alpaca, "s.json": sharegpt, "o.json": old_style})
    conversations, report = load_dataset(["custom_alpaca,custom_sharegpt", "old_style"], root)
    assert [c.messages for c in conversations] == [
        conversation((S, "系统"), (U, "前问"), (A, "前答"), (U, "问\n补充"), (A, "答")).messages,
        conversation((S, "s"), (U, "q"), (A, "a"), (T, "r"), (A, "b")).messages,
        conversation((U, "q"), (A, "a")).messages,
    ]
    assert report.valid == 3


def test_datasets_mix_in_order_with_max_samples_and_one_report(tmp_path: Path) -> None:
    first = [{"instruction": f"a{i}", "output": "x"} for i in range(5)] + [{"instruction": "bad"}]
    second = [{"instruction": f"b{i}", "output": "y"} for i in range(3)]
    info = {"a": {"file_name": "a.json"}, "b": {"file_name": "b.jsonl"}}
    root = registry_dir(tmp_path, info, {"a.json": first, "b.jsonl": second})
    conversations, report = load_dataset(["b,a"], root)
    assert [c.messages[0].content for c in conversations] == ["b0", "b1", "b2", "a0", "a1", "a2", "a3", "a4"]
    assert (report.valid, [str(s) for s in report.skipped]) == (
        8,
        [f"{root / 'a.json'}: record 5: missing output (column 'output')"],
    )
    limited, _ = load_dataset(["a", "b"], root, max_samples=2)
    assert [c.messages[0].content for c in limited] == ["a0", "a1", "b0", "b1"]
    with pytest.raises(DatasetError, match=r"record 5: missing output"):
        load_dataset(["a"], root, strict=True)
    with pytest.raises(DatasetError, match=r"no dataset 'c' in .*dataset_info.json \(registered: a, b\)"):
        load_dataset(["a,c"], root)


def test_num_samples_draws_a_seeded_sample(tmp_path: Path) -> None:
    records = [{"instruction": f"q{i}", "output": "a"} for i in range(10)]
    info = {
        "few": {"file_name": "d.json", "num_samples": 4},
        "many": {"file_name": "d.json", "num_samples": 25},
    }
    root = registry_dir(tmp_path, info, {"d.json": records})
    few, _ = load_dataset(["few"], root)
    again, _ = load_dataset(["few"], root)
    other_seed, _ = load_dataset(["few"], root, seed=7)
    assert len(few) == 4 and len({c.source for c in few}) == 4 and few == again and few != other_seed
    many, _ = load_dataset(["many"], root)
    assert len(many) == 25 and {c.source for c in many[:20]} == {c.source for c in many[:10]}


def test_file_sha1_is_checked(tmp_path: Path) -> None:
    root = registry_dir(tmp_path, {}, {"d.json": ALPACA})
    digest = hashlib.sha1((root / "d.json").read_bytes()).hexdigest()
    write(
        root / "dataset_info.json",
        {
            "good": {"file_name": "d.json", "file_sha1": digest},
            "bad": {"file_name": "d.json", "file_sha1": "0" * 40},
        },
    )
    assert len(load_dataset(["good"], root)[0]) == 2
    with pytest.raises(DatasetError) as error:
        load_dataset(["bad"], root)
    assert str(error.value) == (
        f"dataset 'bad': {root / 'd.json'} has SHA-1 {digest}, but dataset_info.json says {'0' * 40}; "
        "the file changed since it was registered"
    )


def test_hub_datasets_give_a_clear_error_without_touching_the_network(tmp_path: Path) -> None:
    info = {
        "alpaca_zh": {"hf_hub_url": "llamafactory/alpaca_zh"},
        "ms": {"ms_hub_url": "AI-ModelScope/alpaca-gpt4-data-zh"},
        "script": {"script_url": "belle_multiturn"},
    }
    root = registry_dir(tmp_path, info, {})
    with pytest.raises(DatasetError) as error:
        load_dataset(["alpaca_zh"], root)
    assert str(error.value) == (
        "dataset 'alpaca_zh' is on a hub (hf_hub_url: llamafactory/alpaca_zh), which kbqa cannot reach: it reads "
        f"local files only. Download the data into {root} and register it with file_name"
    )
    with pytest.raises(DatasetError, match=r"\(ms_hub_url: AI-ModelScope/alpaca-gpt4-data-zh\)"):
        load_dataset(["ms"], root)
    with pytest.raises(DatasetError, match=r"\(script_url: belle_multiturn\)"):
        load_dataset(["script"], root)


def test_registry_errors_name_the_entry(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset_info.json: no such file"):
        read_dataset_info(tmp_path)
    cases = {
        "fmt": ({"file_name": "d.json", "formatting": "csv"}, "unknown formatting 'csv'"),
        "key": (
            {"file_name": "d.json", "tags": {"speaker_tag": "x"}},
            "unknown column or tag keys: speaker_tag",
        ),
        "num": ({"file_name": "d.json", "num_samples": 0}, "num_samples must be a positive whole number"),
    }
    for name, (entry, message) in cases.items():
        write(tmp_path / "dataset_info.json", {name: entry})
        with pytest.raises(DatasetError, match=f"dataset '{name}': {message}"):
            read_dataset_info(tmp_path)
    # A column kbqa does not train on no longer blocks the file: the entry is refused when it is asked for.
    write(tmp_path / "dataset_info.json", {"img": {"file_name": "d.json", "columns": {"images": "img"}}})
    with pytest.raises(DatasetError, match="dataset 'img': the 'images' column is not supported"):
        load_dataset(["img"], tmp_path)
    root = registry_dir(
        tmp_path,
        {"dev": {"file_name": "d.json", "split": "test"}, "pref": {"file_name": "p.json", "ranking": True}},
        {"d.json": ALPACA, "p.json": [{"instruction": "q", "chosen": "a", "rejected": "b"}]},
    )
    with pytest.raises(DatasetError, match="split 'test' — a local file has only the 'train' split"):
        load_dataset(["dev"], root)
    with pytest.raises(DatasetError, match=r"dataset 'pref' holds preference data \(ranking: true\)"):
        load_dataset(["pref"], root)
    examples, _ = read_dataset(read_dataset_info(root)["pref"], root)
    assert examples == [Preference((Message(U, "q"),), "a", "b", f"{root / 'p.json'}#0")]


def test_a_folder_dataset_reads_each_file(tmp_path: Path) -> None:
    root = registry_dir(
        tmp_path,
        {"folder": {"file_name": "parts"}},
        {"parts/1.json": ALPACA[:1], "parts/2.jsonl": ALPACA[1:], "parts/notes.txt": "ignored"},
    )
    conversations, report = load_dataset(["folder"], root)
    assert [c.source for c in conversations] == [
        f"{root / 'parts' / '1.json'}#0",
        f"{root / 'parts' / '2.jsonl'}#0",
    ]


# --- converters ----------------------------------------------------------------------------------


def test_alpaca_sharegpt_openai_xtuner_convert_into_one_another(tmp_path: Path) -> None:
    source = write(tmp_path / "a.json", ALPACA)
    original, _ = read_file(source)
    previous = source
    for step, format in enumerate(["sharegpt", "xtuner", "openai", "alpaca", "sharegpt"]):
        target = tmp_path / f"{step}-{format}.jsonl"
        report = convert_file(previous, target, format)
        assert (report.valid, report.skipped) == (2, [])
        examples, _ = read_file(target)
        assert [e.messages for e in examples] == [o.messages for o in original]
        previous = target
    assert json.loads((tmp_path / "0-sharegpt.jsonl").read_text(encoding="utf-8").splitlines()[1]) == {
        "conversations": [
            {"from": "human", "value": "在吗？"},
            {"from": "gpt", "value": "在的。"},
            {"from": "human", "value": "翻译成英文\n你好"},
            {"from": "gpt", "value": "Hello"},
        ],
        "system": "你是翻译。",
    }
    assert json.loads((tmp_path / "1-xtuner.jsonl").read_text(encoding="utf-8").splitlines()[1]) == {
        "conversation": [
            {"system": "你是翻译。", "input": "在吗？", "output": "在的。"},
            {"input": "翻译成英文\n你好", "output": "Hello"},
        ]
    }


def test_formats_that_cannot_hold_a_record_skip_it_with_the_reason(tmp_path: Path) -> None:
    source = write(tmp_path / "s.json", SHAREGPT)
    report = convert_file(source, tmp_path / "a.json", "alpaca")
    assert report.valid == 1
    assert [str(s) for s in report.skipped] == [
        f"{source}: record 0: the alpaca format has no place for tool results (observation messages)"
    ]
    with pytest.raises(
        DatasetError, match=r"s.json: record 0: the xtuner format has no place for tool results"
    ):
        convert_file(source, tmp_path / "x.json", "xtuner", strict=True)
    preference = Preference((Message(U, "q"),), "good", "bad")
    assert to_record(preference, "alpaca") == {
        "instruction": "q",
        "input": "",
        "chosen": "good",
        "rejected": "bad",
    }
    assert to_record(preference, "sharegpt")["chosen"] == {"from": "gpt", "value": "good"}


def test_preferences_survive_conversion(tmp_path: Path) -> None:
    source = write(tmp_path / "p.json", [{"instruction": "q", "output": ["better", "worse"], "system": "s"}])
    convert_file(source, tmp_path / "p.jsonl", "sharegpt")
    examples, _ = read_file(tmp_path / "p.jsonl")
    assert examples == [
        Preference((Message(S, "s"), Message(U, "q")), "better", "worse", f"{tmp_path / 'p.jsonl'}#0")
    ]


def test_split_sizes_follow_the_ratio_and_every_part_gets_a_record() -> None:
    assert parse_ratios("7:3") == (7.0, 3.0) and parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert split_sizes(10, (7, 3)) == [7, 3]
    assert split_sizes(50, (99, 1)) == [49, 1]
    assert split_sizes(1000, (99, 1)) == [990, 10]
    assert split_sizes(11, (8, 1, 1)) == [9, 1, 1]
    assert split_sizes(3, (98, 1, 1)) == [1, 1, 1]
    for bad in ("7", "7:0", "a:b", "1:1:1:1"):
        with pytest.raises(DatasetError, match=f"ratio '{bad}': give 2 or 3 positive numbers"):
            parse_ratios(bad)


def test_splits_are_deterministic_with_a_seed_and_partition_the_records(tmp_path: Path) -> None:
    records = list(range(100))
    parts = split_records(records, (7, 3), seed=1)
    assert split_records(records, (7, 3), seed=1) == parts
    assert split_records(records, (7, 3), seed=2) != parts
    assert [len(p) for p in parts] == [70, 30] and sorted(parts[0] + parts[1]) == records
    assert parts[0] != records[:70]  # shuffled
    source = write(tmp_path / "data.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(20)])
    written = split_file(source, tmp_path / "out", (8, 1, 1), seed=3)
    assert {name: count for name, (_, count) in written.items()} == {"train": 16, "dev": 2, "test": 2}
    again = split_file(source, tmp_path / "again", (8, 1, 1), seed=3)
    for name in ("train", "dev", "test"):
        assert written[name][0].read_bytes() == again[name][0].read_bytes()
    dev, _ = read_file(tmp_path / "out" / "dev.jsonl")
    assert len(dev) == 2


# --- tables --------------------------------------------------------------------------------------


def test_xlsx_sheet_and_columns_become_records_and_round_trip(tmp_path: Path) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    workbook.active.title = "封面"
    workbook.active.append(["not the data"])
    sheet = workbook.create_sheet("问答")
    sheet.append(["编号", "问题", "补充", "答案"])
    sheet.append([1, "年假有几天？", None, "五天。"])
    sheet.append([2, "报销多久到账？", "差旅", 10.0])
    sheet.append([3, "没有答案的问题", None, None])
    sheet.append([4, "  前后空格  ", None, "有"])
    path = tmp_path / "qa.xlsx"
    workbook.save(path)

    rows = read_table(path, "问答")
    conversations, report = table_conversations(
        rows, str(path), "问题", "答案", input="补充", system="你是客服。"
    )
    assert [c.messages for c in conversations] == [
        conversation((S, "你是客服。"), (U, "年假有几天？"), (A, "五天。")).messages,
        conversation((S, "你是客服。"), (U, "报销多久到账？\n差旅"), (A, "10")).messages,
        conversation((S, "你是客服。"), (U, "前后空格"), (A, "有")).messages,
    ]
    assert [str(s) for s in report.skipped] == [
        f"{path}: record 2: empty answer (column '答案', spreadsheet row 4)"
    ]

    exported = tmp_path / "back.xlsx"
    write_table(exported, table_rows(conversations))
    back, _ = table_conversations(
        read_table(exported), str(exported), "question", "answer", system="你是客服。"
    )
    assert [c.messages for c in back] == [c.messages for c in conversations]

    with pytest.raises(DatasetError, match=r"no sheet 'Sheet9'; the sheets are: 封面, 问答"):
        read_table(path, "Sheet9")
    with pytest.raises(DatasetError, match=r"no column 'Q'; the columns are: 编号, 问题, 补充, 答案"):
        table_conversations(rows, str(path), "Q", "答案")
    with pytest.raises(NoValidRecord, match="no valid record"):
        table_conversations(rows[2:3], str(path), "问题", "答案")


def test_csv_tables_and_their_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\n年假有几天？,五天。\n,空问题\n", encoding="utf-8-sig")
    conversations, report = table_conversations(read_table(path), str(path), "question", "answer")
    assert [c.messages for c in conversations] == [conversation((U, "年假有几天？"), (A, "五天。")).messages]
    assert [s.reason for s in report.skipped] == ["empty question (column 'question', spreadsheet row 3)"]
    write_table(tmp_path / "out.csv", table_rows(conversations))
    assert read_table(tmp_path / "out.csv") == [
        {"system": "", "question": "年假有几天？", "answer": "五天。"}
    ]
    with pytest.raises(DatasetError, match="a CSV file has no sheets"):
        read_table(path, "Sheet1")


# --- RAG records ---------------------------------------------------------------------------------

REFUSAL = PromptConfig().refusal_zh


def multidoc_records(n: int) -> list[dict]:
    return [
        {
            "question": f"第{i}号仓库在哪里？",
            "answer": f"在{i}号路",
            "positive_doc": f"第{i}号仓库位于城东，在{i}号路旁边。",
            "negative_docs": [
                f"第{i}号仓库的负责人姓王。",
                {"text": f"第{i}号仓库每天八点开门。", "title": "制度.pdf", "page": 3},
            ],
        }
        for i in range(n)
    ]


def chunk_texts(user_turn: str) -> list[str]:
    """Return the chunk texts of a rendered Chinese QA prompt, in their numbered order."""
    lines = [line for line in user_turn.splitlines() if line.startswith("[")]
    return [line.split("] ", 1)[1].rsplit("（来源：", 1)[0] for line in lines]


def test_rag_records_hold_the_positive_among_k_distractors_and_a_share_of_refusals(tmp_path: Path) -> None:
    samples, _ = read_rag_samples(write(tmp_path / "m.jsonl", multidoc_records(20)))
    options = RagOptions(k=3, refusal_share=0.25, seed=5)
    conversations = build_rag_conversations(samples, PromptConfig(), options)
    assert len(conversations) == 20
    refusals = [c for c in conversations if c.messages[-1].content == REFUSAL]
    assert len(refusals) == 5
    places = set()
    for sample, record in zip(samples, conversations, strict=True):
        system, user, reply = record.messages
        assert (system.role, user.role, reply.role) == (S, U, A)
        texts = chunk_texts(user.content)
        assert len(texts) == 4 and len(set(texts)) == 4
        distractors = [t for t in texts if t != sample.positive.text]
        assert all(sample.answer not in t for t in distractors)
        if record in refusals:
            assert sample.positive.text not in texts
        else:
            place = texts.index(sample.positive.text) + 1
            places.add(place)
            assert reply.content == f"{sample.answer}[{place}]"
    assert len(places) > 1  # the positive passage is not always in the same place
    assert build_rag_conversations(samples, PromptConfig(), options) == conversations


def test_rag_prompt_is_the_one_the_service_builds(tmp_path: Path) -> None:
    config = PromptConfig(
        system_zh="定制系统提示。",
        template_zh="资料：{% for c in chunks %}<{{ c.n }}|{{ c.source }}|{{ c.page }}>{{ c.text }}{% endfor %}\n问：{{ question }}",
        refusal_zh="不知道。",
    )
    samples, _ = read_rag_samples(write(tmp_path / "m.json", multidoc_records(4)))
    conversations = build_rag_conversations(samples, config, RagOptions(k=2, refusal_share=0.5, seed=1))
    builder = PromptBuilder(
        config, lambda messages: sum(len(m.content) for m in messages), context_window=10**6
    )
    pool = {p.text: p for s in samples for p in (s.positive, *s.negatives)}
    for sample, record in zip(samples, conversations, strict=True):
        texts = [part.split(">", 1)[1] for part in record.messages[1].content.split("\n")[0].split("<")[1:]]
        hits = [hit(n, pool[text]) for n, text in enumerate(texts)]
        served = builder.build(sample.question, hits, history=[], max_new_tokens=16)
        assert list(record.messages[:2]) == served.messages
        assert served.messages[0].content == "定制系统提示。"
    assert sum(c.messages[-1].content == "不知道。" for c in conversations) == 2
    assert "|制度.pdf|3>第" in "".join(c.messages[1].content for c in conversations)


def hit(n: int, passage: Passage) -> SearchHit:
    return SearchHit(n, 0.9, passage.text, n, passage.source, "", passage.page, (), 0, len(passage.text))


def test_rag_hard_negatives_come_from_the_search_function_without_the_answer() -> None:
    samples = [RagSample("年假有几天？", "五天", Passage("员工年假为五天。", "hr.md"), source="s#0")]
    asked = []

    def search(question: str, count: int) -> list[Passage]:
        asked.append((question, count))
        return [
            Passage("员工年假为五天。", "hr.md"),  # the positive itself
            Passage("员工年假", "hr.md"),  # a piece of the positive
            Passage("年假五天，病假另计。", "hr.md"),  # holds the answer
            Passage("病假需要医院证明。", "hr.md", 2),
            Passage("婚假为三天。", "hr.md"),
        ]

    [record] = build_rag_conversations(samples, PromptConfig(), RagOptions(k=2, refusal_share=0.0), search)
    assert asked == [("年假有几天？", 8)]
    assert sorted(chunk_texts(record.messages[1].content)) == sorted(
        ["员工年假为五天。", "病假需要医院证明。", "婚假为三天。"]
    )
    with pytest.raises(FinetuneError, match=r"refusal share must lie in \[0, 1\]"):
        RagOptions(refusal_share=1.5)


def test_squad_files_give_one_sample_per_answerable_question(tmp_path: Path) -> None:
    squad = {
        "data": [
            {
                "title": "仓库",
                "paragraphs": [
                    {
                        "context": "一号仓库在东边。",
                        "qas": [{"question": "一号仓库在哪？", "answers": [{"text": "东边"}]}],
                    },
                    {
                        "context": "二号仓库在西边。",
                        "qas": [
                            {"question": "二号仓库在哪？", "answers": [{"text": "西边"}]},
                            {"question": "三号仓库在哪？", "answers": [], "is_impossible": True},
                        ],
                    },
                ],
            }
        ]
    }
    path = write(tmp_path / "squad.json", squad)
    samples, report = read_rag_samples(path)
    assert [(s.question, s.answer, s.positive) for s in samples] == [
        ("一号仓库在哪？", "东边", Passage("一号仓库在东边。", "仓库")),
        ("二号仓库在哪？", "西边", Passage("二号仓库在西边。", "仓库")),
    ]
    assert [str(s) for s in report.skipped] == [f"{path}: record 2: the question has no answer"]
    [first, second] = build_rag_conversations(samples, PromptConfig(), RagOptions(k=1, refusal_share=0.0))
    assert chunk_texts(first.messages[1].content) in (
        ["一号仓库在东边。", "二号仓库在西边。"],
        ["二号仓库在西边。", "一号仓库在东边。"],
    )
    with pytest.raises(DatasetError, match="not SQuAD format"):
        read_rag_samples(write(tmp_path / "bad.json", {"data": [{"paragraphs": [{"qas": []}]}]}))


def test_malformed_multidoc_records_are_reported(tmp_path: Path) -> None:
    records = multidoc_records(1) + [
        {"question": "q", "answer": "", "positive_doc": "p"},
        {"question": "q", "answer": "a"},
        {"question": "q", "answer": "a", "positive_doc": "p", "negative_docs": [{"title": "no text"}]},
    ]
    path = write(tmp_path / "m.jsonl", records)
    _, report = read_rag_samples(path)
    assert [str(s) for s in report.skipped] == [
        f"{path}: record 1: missing 'answer' (a non-empty string)",
        f"{path}: record 2: missing 'positive_doc'",
        f"{path}: record 3: negative_docs item 0 is not a document (a string, or an object with 'text')",
    ]


# --- command line --------------------------------------------------------------------------------


def kbqa(*args: str):
    from typer.testing import CliRunner

    from app.cli import app

    return CliRunner().invoke(app, list(args))


def shows(output: str, text: str) -> bool:
    """Return whether console output holds `text`, wherever rich wrapped its lines (spaces ignored)."""
    return "".join(text.split()) in "".join(output.split())


def test_cli_converts_formats_tables_and_splits(tmp_path: Path) -> None:
    source = write(tmp_path / "a.json", ALPACA + [{"instruction": "no answer"}])
    result = kbqa("finetune", "convert", "format", str(source), str(tmp_path / "x.jsonl"), "--to", "xtuner")
    assert result.exit_code == 0, result.output
    assert shows(result.stdout, f"wrote 2 records to {tmp_path / 'x.jsonl'}")
    assert shows(result.stderr, "record 2: missing output (column 'output')")
    strict = kbqa("finetune", "convert", "format", str(source), str(tmp_path / "y.json"), "--strict")
    assert strict.exit_code == 1 and shows(strict.stderr, "record 2: missing output")
    bad_format = kbqa("finetune", "convert", "format", str(source), str(tmp_path / "z.json"), "--to", "csv")
    assert bad_format.exit_code == 2
    assert shows(bad_format.stderr, "--to must be one of alpaca, sharegpt, openai, xtuner")

    table = tmp_path / "qa.csv"
    table.write_text("问题,答案\n年假有几天？,五天。\n", encoding="utf-8")
    args = ["finetune", "convert", "table", str(table), str(tmp_path / "t.json"), "--question", "问题"]
    result = kbqa(*args, "--answer", "答案", "--system", "你是客服。", "--to", "xtuner")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8")) == [
        {"conversation": [{"system": "你是客服。", "input": "年假有几天？", "output": "五天。"}]}
    ]

    many = write(tmp_path / "many.json", [{"instruction": f"q{i}", "output": "a"} for i in range(10)])
    result = kbqa(
        "finetune",
        "convert",
        "split",
        str(many),
        "--ratio",
        "7:3",
        "--seed",
        "1",
        "--out-dir",
        str(tmp_path / "s"),
    )
    assert result.exit_code == 0, result.output
    assert shows(result.stdout, "train: 7 records") and shows(result.stdout, "dev: 3 records")
    assert len(json.loads((tmp_path / "s" / "dev.json").read_text(encoding="utf-8"))) == 3


def test_cli_builds_rag_records_with_hard_negatives_from_a_knowledge_base(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rules.txt").write_text("仓库的负责人每周一巡查消防设备。", encoding="utf-8")
    build = kbqa("--data-dir", str(data), "index", "build", str(docs), "--kb", "hr")
    assert build.exit_code == 0, build.output
    source = write(tmp_path / "m.jsonl", multidoc_records(4))
    target = tmp_path / "rag.json"
    args = ["finetune", "convert", "rag", str(source), str(target), "-k", "3", "--refusal-share", "0.5"]
    result = kbqa("--data-dir", str(data), *args, "--kb", "hr", "--to", "alpaca")
    assert result.exit_code == 0, result.output
    records = json.loads(target.read_text(encoding="utf-8"))
    assert len(records) == 4 and sum(r["output"] == REFUSAL for r in records) == 2
    assert all(
        "仓库的负责人每周一巡查消防设备。（来源：docs/rules.txt）" in r["instruction"] for r in records
    )
    assert all(r["system"] == PromptConfig().system_zh for r in records)
    missing = kbqa("--data-dir", str(data), *args, "--kb", "nope")
    assert missing.exit_code == 1 and shows(missing.stderr, "knowledge base 'nope' does not exist")


def test_cli_data_check_counts_valid_and_skipped_records(tmp_path: Path) -> None:
    root = registry_dir(
        tmp_path,
        {"good": {"file_name": "a.json"}, "empty": {"file_name": "e.json"}},
        {"a.json": ALPACA_BAD, "e.json": ALPACA_BAD[1:3]},
    )
    result = kbqa("finetune", "data-check", "--dataset", "good", "--dataset_dir", str(root), "--json")
    assert result.exit_code == 0, result.output
    [check] = json.loads(result.stdout)
    assert (check["dataset"], check["valid"], check["skipped"]) == ("good", 1, 6)
    assert check["reasons"]["missing output (column 'output')"] == 1
    assert check["malformed"][0] == f"{root / 'a.json'}: record 1: missing instruction (column 'instruction')"

    result = kbqa("finetune", "data-check", "--dataset", "good,empty", "--dataset_dir", str(root))
    assert result.exit_code == 1
    assert shows(result.stdout, "1 × missing output (column 'output')")
    assert shows(result.stderr, f"{root / 'e.json'}: no valid record (2 malformed")
    strict = kbqa("finetune", "data-check", "--dataset", "good", "--dataset_dir", str(root), "--strict")
    assert strict.exit_code == 1 and shows(strict.stderr, "record 1: missing instruction")


# --- Multi-Doc-QA-Chinese, as its folder of JSON Lines files named .json holds it -----------------

PLAIN = (
    "你现在是一个可以根据文档内容进行问答的机器人，以下是用于参考的文档内容：\n\n{doc}\n问题为：{query}\n答："
)


def multidoc_chinese(first: int, n: int) -> list[str]:
    """Return n Multi-Doc-QA-Chinese lines: a document, its questions (two on every third), distractors."""
    lines = []
    for i in range(first, first + n):
        qa = [{"question": f"第{i}号仓库在哪里？", "answer": f"第{i}号仓库在{i}号路。"}]
        if i % 3 == 0:
            qa.append({"question": f"第{i}号仓库几点开门？", "answer": "八点。"})
        record = {
            "QA": qa,
            "positive_doc": [{"text": f"第{i}号仓库位于城东{i}号路，每天八点开门。"}],
            "negative_doc": [{"text": f"第{i}号食堂的厨师姓王。"}, {"text": f"第{i}号车间禁止吸烟。"}],
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


def multidoc_folder(root: Path) -> Path:
    folder = root / "Multi-Doc-QA-Chinese"
    folder.mkdir(parents=True)
    (folder / "part_0.json").write_text("\n".join(multidoc_chinese(0, 45)) + "\n", encoding="utf-8")
    (folder / "part_1.json").write_text("\n".join(multidoc_chinese(45, 30)) + "\n", encoding="utf-8")
    (folder / "README.md").write_text("# Multi-Doc-QA-Chinese\n", encoding="utf-8")  # not data
    return folder


def test_multidoc_qa_chinese_files_and_folders_are_read(tmp_path: Path) -> None:
    folder = multidoc_folder(tmp_path)
    samples, report = read_rag_samples(folder)
    assert len(samples) == 100 and report.valid == 100 and not report.skipped  # 75 records, 25 with two
    first, second = samples[0], samples[1]
    assert (first.question, first.answer) == ("第0号仓库在哪里？", "第0号仓库在0号路。")
    assert (second.question, second.answer) == ("第0号仓库几点开门？", "八点。")
    assert first.positive.text == second.positive.text == "第0号仓库位于城东0号路，每天八点开门。"
    assert [p.text for p in first.negatives] == ["第0号食堂的厨师姓王。", "第0号车间禁止吸烟。"]
    assert first.source == f"{folder / 'part_0.json'}#0"
    one, _ = read_rag_samples(folder / "part_1.json")
    assert len(one) == 40
    bare = tmp_path / "bare"  # the files of a download may carry no suffix
    bare.write_text("\n".join(multidoc_chinese(0, 2)), encoding="utf-8")
    assert len(read_rag_samples(bare)[0]) == 3
    bad = write(
        tmp_path / "bad.json",
        [
            {"QA": [{"question": "q"}], "positive_doc": [{"text": "d"}]},
            {"QA": [], "positive_doc": [{"text": "d"}]},
            {"QA": [{"question": "q", "answer": "a"}], "positive_doc": []},
            {"QA": [{"question": "q", "answer": "a"}], "positive_doc": [{"text": "d"}]},
        ],
    )
    _, report = read_rag_samples(bad)
    assert [s.reason for s in report.skipped] == [
        "QA item 0: missing 'answer' (a non-empty string)",
        "'QA' is not a non-empty list of {question, answer} objects",
        "'positive_doc' holds no document",
    ]


def test_cli_writes_multidoc_qa_chinese_as_plain_instructions_split_99_to_1(tmp_path: Path) -> None:
    folder = multidoc_folder(tmp_path)
    out = tmp_path / "sft"
    result = kbqa("finetune", "convert", "rag", str(folder), str(out), "--plain", "--ratio", "99:1")
    assert result.exit_code == 0, result.output
    assert shows(result.stdout, "train: 99 records") and shows(result.stdout, "dev: 1 records")
    train = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    dev = [json.loads(line) for line in (out / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) == 99 and len(dev) == 1
    samples, _ = read_rag_samples(folder)
    expected = {(PLAIN.format(doc=s.positive.text, query=s.question), s.answer) for s in samples}
    assert {(r["instruction"], r["output"]) for r in train + dev} == expected
    assert all(r["input"] == "" and "system" not in r for r in train)
    again = kbqa("finetune", "convert", "rag", str(folder), str(tmp_path / "b"), "--plain", "--ratio", "99:1")
    assert again.exit_code == 0
    assert (tmp_path / "b" / "dev.jsonl").read_text(encoding="utf-8") == (out / "dev.jsonl").read_text(
        encoding="utf-8"
    )

    # The default: the service's prompt, the sample's own negative documents as distractors.
    result = kbqa("finetune", "convert", "rag", str(folder), str(tmp_path / "rag.jsonl"), "-k", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "rag.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 100 and sum(r["output"] == REFUSAL for r in records) == 20
    assert (
        "第0号食堂的厨师姓王。" in records[0]["instruction"]
        or "第0号车间禁止吸烟。" in records[0]["instruction"]
    )
    assert all(r["system"] == PromptConfig().system_zh for r in records)

    names = kbqa(
        "finetune", "convert", "rag", str(folder), str(tmp_path / "c"), "--ratio", "9:1", "--names", "a"
    )
    assert names.exit_code == 1 and shows(names.stderr, "give 2 different names, one per ratio")


# --- XTuner's recipe output and Excel tables as people write them --------------------------------


def test_a_jsonl_file_holding_one_json_array_is_read_split_and_converted(tmp_path: Path) -> None:
    records = [
        {"conversation": [{"system": "你是客服。", "input": f"问题{i}", "output": f"回答{i}"}]}
        for i in range(10)
    ]
    path = tmp_path / "xtuner.jsonl"  # the XTuner recipe's json.dump of the whole list into a .jsonl file
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")
    examples, report = read_file(path)
    assert report.valid == 10 and examples[3].messages[1] == Message(U, "问题3")
    result = kbqa("finetune", "convert", "split", str(path), "--ratio", "7:3", "--names", "train,test")
    assert result.exit_code == 0, result.output
    assert shows(result.stdout, "train: 7 records") and shows(result.stdout, "test: 3 records")
    # The split keeps the input's layout: one JSON list in, one JSON list out (issue 28; it wrote JSON Lines),
    # and the first records in file order train, as the seed's data_helper.py splits.
    assert json.loads((tmp_path / "test.jsonl").read_text(encoding="utf-8")) == records[7:]
    assert not (tmp_path / "dev.jsonl").exists()
    result = kbqa("finetune", "convert", "format", str(path), str(tmp_path / "a.json"), "--to", "alpaca")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))[0] == {
        "instruction": "问题0",
        "input": "",
        "output": "回答0",
        "system": "你是客服。",
    }


def test_lines_that_are_not_json_are_clear_errors_not_tracebacks(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    good = json.dumps({"conversation": [{"input": "q", "output": "a"}]})
    broken.write_text("{'input': 'python repr, not JSON'}\n" + good + "\n", encoding="utf-8")
    split = kbqa("finetune", "convert", "split", str(broken), "--out-dir", str(tmp_path / "s"))
    assert split.exit_code == 1 and not isinstance(split.exception, TypeError)
    assert shows(split.stderr, f"{broken}: record 0: not valid JSON") and "Unparsable" not in split.output
    converted = kbqa("finetune", "convert", "format", str(broken), str(tmp_path / "out.json"))
    assert converted.exit_code == 0, converted.output
    assert shows(converted.stdout, "wrote 1 records") and shows(converted.stderr, "record 0: not valid JSON")
    assert "Unparsable" not in converted.output
    only_bad = write(tmp_path / "bad.jsonl", ["not json"])
    bad = kbqa("finetune", "convert", "format", str(only_bad), str(tmp_path / "o.json"))
    assert (
        bad.exit_code == 1
        and shows(bad.stderr, "record 0: not valid JSON")
        and "Unparsable" not in bad.output
    )
    names = kbqa("finetune", "convert", "split", str(broken), "--ratio", "8:1:1", "--names", "a,b")
    assert names.exit_code == 1 and shows(names.stderr, "give 3 different names, one per ratio")


def test_table_columns_by_excel_letter(tmp_path: Path) -> None:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["编号", "问题", None, "答案"])  # a column without a header is still column C
    sheet.append([1, "年假有几天？", "补充一", "五天。"])
    sheet.append([2, "报销多久到账？", "补充二", "十天。"])
    path = tmp_path / "faq.xlsx"
    workbook.save(path)
    target = tmp_path / "faq.jsonl"
    args = ["finetune", "convert", "table", str(path), str(target), "--question", "B", "--answer", "D"]
    result = kbqa(*args, "--input", "c", "--to", "xtuner")
    assert result.exit_code == 0, result.output
    first = json.loads(target.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"conversation": [{"input": "年假有几天？\n补充一", "output": "五天。"}]}
    by_name = kbqa(
        "finetune",
        "convert",
        "table",
        str(path),
        str(tmp_path / "n.json"),
        "--question",
        "问题",
        "--answer",
        "答案",
    )
    assert by_name.exit_code == 0, by_name.output
    missing = kbqa(
        "finetune",
        "convert",
        "table",
        str(path),
        str(tmp_path / "x.json"),
        "--question",
        "F",
        "--answer",
        "D",
    )
    assert missing.exit_code == 1 and shows(
        missing.stderr, "no column 'F'; the columns are: 编号, 问题, C, 答案 (or by letter, A to D)"
    )


# --- LLaMA-Factory's own dataset_info.json, and function-call data ----------------------------------

# Entries of LLaMA-Factory's data/dataset_info.json, field by field.
LLAMAFACTORY_INFO = {
    "identity": {"file_name": "identity.json"},
    "glaive_toolcall_zh_demo": {
        "file_name": "glaive_toolcall_zh_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
    },
    "mllm_demo": {
        "file_name": "mllm_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
    "kto_en_demo": {
        "file_name": "kto_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
    "dpo_zh_demo": {
        "file_name": "dpo_zh_demo.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "llava_1k_en": {
        "hf_hub_url": "BUAADreamer/llava-en-zh-2k",
        "subset": "en",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    },
    "starcoder_python": {
        "hf_hub_url": "bigcode/starcoderdata",
        "ms_hub_url": "AI-ModelScope/starcoderdata",
        "columns": {"prompt": "content"},
        "folder": "python",
    },
}
TOOLS = [
    {
        "name": "generate_invoice",
        "description": "生成发票",
        "parameters": {
            "type": "object",
            "properties": {"customer_name": {"type": "string", "description": "客户名称"}},
            "required": ["customer_name"],
        },
    }
]
GLAIVE = [
    {
        "conversations": [
            {"from": "human", "value": "我需要为John Doe生成一张发票。"},
            {
                "from": "function_call",
                "value": json.dumps(
                    {"name": "generate_invoice", "arguments": {"customer_name": "约翰·多伊"}},
                    ensure_ascii=False,
                ),
            },
            {"from": "observation", "value": json.dumps({"invoice_id": "INV12345"})},
            {"from": "gpt", "value": "发票已成功生成，编号为INV12345。"},
        ],
        "tools": json.dumps(TOOLS, ensure_ascii=False),
    },
    {
        "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}],
        "tools": "[]",
    },
]


def llamafactory_dir(tmp_path: Path) -> Path:
    return registry_dir(
        tmp_path,
        LLAMAFACTORY_INFO,
        {
            "identity.json": [{"instruction": "你是谁？", "input": "", "output": "我是 {{name}}。"}],
            "glaive_toolcall_zh_demo.json": GLAIVE,
            "mllm_demo.json": [{"messages": [], "images": []}],
            "kto_en_demo.json": [{"messages": [], "label": True}],
            "dpo_zh_demo.json": [
                {
                    "conversations": [{"from": "human", "value": "q"}],
                    "chosen": {"from": "gpt", "value": "a"},
                    "rejected": {"from": "gpt", "value": "b"},
                }
            ],
        },
    )


def test_llamafactorys_own_dataset_info_loads_and_refuses_only_what_is_asked_for(tmp_path: Path) -> None:
    root = llamafactory_dir(tmp_path)
    assert set(read_dataset_info(root)) == set(LLAMAFACTORY_INFO)
    conversations, _ = load_dataset(["identity,glaive_toolcall_zh_demo"], root)
    assert len(conversations) == 3
    for name, column in (("mllm_demo", "images"), ("kto_en_demo", "kto_tag"), ("llava_1k_en", "images")):
        with pytest.raises(DatasetError, match=f"dataset '{name}': the '{column}' column is not supported"):
            load_dataset([name], root)
    with pytest.raises(DatasetError, match="on a hub"):
        load_dataset(["starcoder_python"], root)
    result = kbqa("finetune", "data-check", "--dataset", "identity,dpo_zh_demo", "--dataset_dir", str(root))
    assert result.exit_code == 0, result.output


def test_function_call_data_reads_with_its_tools_and_lays_out_per_template(tmp_path: Path) -> None:
    from finetune.tools import GLM4_TOOL_PROMPT, with_tools

    root = llamafactory_dir(tmp_path)
    [call, plain], _ = read_dataset(read_dataset_info(root)["glaive_toolcall_zh_demo"], root)
    assert call.calls == (1,) and json.loads(call.tools) == TOOLS
    assert [m.role for m in call.messages] == [U, A, T, A]
    assert (plain.tools, plain.calls) == ("", ())

    qwen = with_tools(call, "chatml")
    system, user, called, observed, answer = qwen.messages
    assert system.role == S and system.content.startswith("# Tools\n\nYou may call one or more functions")
    assert json.dumps({"type": "function", "function": TOOLS[0]}, ensure_ascii=False) in system.content
    assert called == Message(
        A,
        '<tool_call>\n{"name": "generate_invoice", "arguments": {"customer_name": "约翰·多伊"}}\n</tool_call>',
    )
    assert (user, observed, answer) == call.messages[0:1] + call.messages[2:]

    glm = with_tools(
        Conversation((Message(S, "你是助手。"), *call.messages), "g#0", call.tools, (2,)), "glm4"
    )
    body = json.dumps(TOOLS[0], indent=4, ensure_ascii=False)
    assert glm.messages[0].content == "你是助手。" + GLM4_TOOL_PROMPT.format(
        tool_text=f"\n\n## generate_invoice\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
    )
    assert glm.messages[2] == Message(A, 'generate_invoice\n{"customer_name": "约翰·多伊"}')
    assert with_tools(call, "chatglm3").messages == with_tools(call, "glm4").messages
    assert with_tools(plain, "llama3") == plain
    with pytest.raises(FinetuneError, match="train it with --template chatglm3, glm4, chatml"):
        with_tools(call, "llama3")

    converted = tmp_path / "back.json"
    convert_file(root / "glaive_toolcall_zh_demo.json", converted, "sharegpt")
    back, _ = read_file(converted)
    assert back[0].tools == call.tools and back[0].calls == call.calls
    report = convert_file(root / "glaive_toolcall_zh_demo.json", tmp_path / "a.json", "alpaca")
    assert report.valid == 1 and "no place for tool results" in report.skipped[0].reason
    no_result = Conversation(
        (Message(U, "开票"), Message(A, '{"name": "generate_invoice"}')), "c#0", "", (1,)
    )
    with pytest.raises(Malformed, match="the xtuner format has no place for tools and function calls"):
        to_record(no_result, "xtuner")
