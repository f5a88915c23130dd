"""Text-to-SQL evaluation as DB-GPT-Hub scores it: execution accuracy on Spider-style SQLite databases the
tests create (read-only, with a timeout), exact-set match through sqlglot, per-difficulty rows, the CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from finetune.errors import DatasetError
from finetune.text2sql import (
    SqlExample,
    evaluate_sql,
    exact_set_match,
    execute,
    execution_match,
    first_statement,
)


def spider_dir(root: Path) -> Path:
    """Return a Spider-style database folder: concert_singer/concert_singer.sqlite and pets/pets.sqlite."""
    db_dir = root / "database"
    for db_id, script in {
        "concert_singer": """
            CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);
            CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INTEGER, year TEXT);
            INSERT INTO singer VALUES (1, 'Joe Sharp', 'Netherlands', 52), (2, 'Timbaland', 'United States', 32),
                (3, 'Justin Brown', 'France', 29), (4, 'Rose White', 'France', 41), (5, 'John Nizinik', 'France', 43);
            INSERT INTO concert VALUES (1, 1, '2014'), (2, 2, '2014'), (3, 3, '2015'), (4, 3, '2015');
        """,
        "pets": """
            CREATE TABLE pets (pet_id INTEGER PRIMARY KEY, pet_type TEXT, weight REAL);
            INSERT INTO pets VALUES (1, 'cat', 12.0), (2, 'dog', 13.4), (3, 'dog', 9.3);
        """,
    }.items():
        (db_dir / db_id).mkdir(parents=True)
        with sqlite3.connect(db_dir / db_id / f"{db_id}.sqlite") as connection:
            connection.executescript(script)
        connection.close()
    return db_dir


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_execution_accuracy_compares_multisets_and_order_only_where_the_gold_orders(tmp_path: Path) -> None:
    db = spider_dir(tmp_path) / "concert_singer" / "concert_singer.sqlite"
    gold = "SELECT name FROM singer WHERE country = 'France'"
    assert execution_match("SELECT name FROM singer WHERE age < 50 AND country = 'France'", gold, db, 5)
    assert execution_match("SELECT name FROM singer WHERE country = 'France' ORDER BY age", gold, db, 5)
    assert not execution_match("SELECT name FROM singer", gold, db, 5)
    assert not execution_match("SELECT country FROM singer", "SELECT DISTINCT country FROM singer", db, 5)
    assert execution_match(
        "SELECT DISTINCT country FROM singer ORDER BY country DESC",
        "SELECT DISTINCT country FROM singer",
        db,
        5,
    )
    ordered = "SELECT name FROM singer ORDER BY age DESC"
    assert execution_match("SELECT name FROM singer ORDER BY age DESC", ordered, db, 5)
    assert not execution_match("SELECT name FROM singer ORDER BY age", ordered, db, 5)
    assert not execution_match("SELECT nme FROM singer", gold, db, 5)  # an error is wrong
    assert not execution_match("SELEC name", gold, db, 5)
    with pytest.raises(DatasetError, match="the gold query fails"):
        execution_match(gold, "SELECT nothing FROM nowhere", db, 5)


def test_queries_run_read_only_and_stop_at_the_timeout(tmp_path: Path) -> None:
    db_dir = spider_dir(tmp_path)
    db = db_dir / "concert_singer" / "concert_singer.sqlite"
    before = digest(db)
    for attack in (
        "DELETE FROM singer",
        "DROP TABLE singer",
        "UPDATE singer SET age = 0",
        "INSERT INTO singer VALUES (9, 'x', 'y', 1)",
        "CREATE TABLE t (x)",
        "PRAGMA query_only = OFF",
        "SELECT 1; DELETE FROM singer",
        f"ATTACH DATABASE '{tmp_path / 'new.sqlite'}' AS other",
    ):
        execute(db, attack, 5)
        assert not execution_match(attack, "SELECT count(*) FROM singer", db, 5) or attack.startswith(
            "PRAGMA"
        )
    assert digest(db) == before and not (tmp_path / "new.sqlite").exists()
    assert execute(db, "SELECT count(*) FROM singer", 5) == [(5,)]
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    start = time.monotonic()
    assert execute(db, endless, 0.3) is None
    assert not execution_match(endless, "SELECT count(*) FROM singer", db, 0.3)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("prediction", "gold", "same"),
    [
        # case, whitespace, table aliases, column aliases and literal values do not count
        (
            "select t1.NAME from SINGER as t1 where t1.age > 30",
            "SELECT Name FROM singer WHERE age  >  20",
            True,
        ),
        (
            'SELECT name FROM singer WHERE country = "France"',
            "select name from singer where country = 'Spain'",
            True,
        ),
        ("SELECT count(*) AS n FROM singer", "SELECT count(*) FROM singer", True),
        # the select list and AND-ed conditions are sets
        (
            "SELECT age, name FROM singer WHERE age > 1 AND country = 'x'",
            "SELECT name, age FROM singer WHERE country = 'y' AND age > 2",
            True,
        ),
        (
            "SELECT T2.name FROM concert AS T1 JOIN singer AS T2 ON T2.singer_id = T1.singer_id",
            "SELECT singer.name FROM singer JOIN concert ON singer.singer_id = concert.singer_id",
            True,
        ),
        (
            "SELECT name FROM singer ORDER BY age DESC LIMIT 1",
            "SELECT name FROM singer ORDER BY age DESC LIMIT 3",
            True,
        ),
        # other clauses, operators, order or set operations do
        ("SELECT name FROM singer WHERE age > 30", "SELECT name FROM singer WHERE age < 30", False),
        ("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY age DESC", False),
        ("SELECT name FROM singer", "SELECT name FROM singer LIMIT 1", False),
        ("SELECT DISTINCT name FROM singer", "SELECT name FROM singer", False),
        ("SELECT country FROM singer GROUP BY country", "SELECT country FROM singer", False),
        (
            "SELECT name FROM singer UNION SELECT year FROM concert",
            "SELECT name FROM singer INTERSECT SELECT year FROM concert",
            False,
        ),
        ("SELEC name FROM", "SELECT name FROM singer", False),
    ],
)
def test_exact_set_match(prediction: str, gold: str, same: bool) -> None:
    assert exact_set_match(prediction, gold) is same


def gold_file(tmp_path: Path) -> tuple[Path, Path]:
    rows = [
        ("SELECT count(*) FROM singer", "concert_singer", "easy", "SELECT COUNT(*) FROM singer"),
        (
            "SELECT name FROM singer WHERE country = 'France'",
            "concert_singer",
            "easy",
            "SELECT name FROM singer WHERE country = 'Spain'",
        ),
        (
            "SELECT name FROM singer ORDER BY age DESC",
            "concert_singer",
            "medium",
            "SELECT name FROM singer ORDER BY age DESC",
        ),
        (
            "SELECT pet_type, max(weight) FROM pets GROUP BY pet_type",
            "pets",
            "hard",
            "SELECT pet_type, max(weight) FROM pets",
        ),
        (
            "SELECT T2.name FROM concert AS T1 JOIN singer AS T2 ON T1.singer_id = T2.singer_id WHERE T1.year = '2015'",
            "concert_singer",
            "hard",
            "SELECT name FROM singer WHERE singer_id = 3",
        ),
    ]
    gold = tmp_path / "gold.sql"
    gold.write_text("".join(f"{q}\t{db}\t{level}\n" for q, db, level, _ in rows), encoding="utf-8")
    pred = tmp_path / "pred.sql"
    pred.write_text("".join(f"{p}\n" for *_, p in rows), encoding="utf-8")
    return gold, pred


def test_scores_overall_and_per_difficulty(tmp_path: Path) -> None:
    from finetune.text2sql import read_gold, read_predictions

    db_dir = spider_dir(tmp_path)
    gold, pred = gold_file(tmp_path)
    scores = {s.difficulty: s for s in evaluate_sql(read_gold(gold), read_predictions(pred), db_dir)}
    assert list(scores) == ["all", "easy", "medium", "hard"]
    # execution: 1 yes, 2 no (Spain), 3 yes, 4 no (one row, not two), 5 yes (Justin Brown twice vs once: no)
    assert (scores["all"].count, scores["all"].execution_accuracy) == (5, 2 / 5)
    assert scores["all"].exact_set_match == 3 / 5  # 1, 2 (values masked), 3
    assert (scores["easy"].execution_accuracy, scores["easy"].exact_set_match) == (0.5, 1.0)
    assert (scores["hard"].count, scores["hard"].execution_accuracy, scores["hard"].exact_set_match) == (
        2,
        0.0,
        0.0,
    )
    with pytest.raises(DatasetError, match="2 predictions for 1 gold queries"):
        evaluate_sql([SqlExample("SELECT 1", "pets")], ["a", "b"], db_dir)
    with pytest.raises(DatasetError, match="no database .*nope.sqlite"):
        evaluate_sql([SqlExample("SELECT 1", "nope")], ["SELECT 1"], db_dir)


def test_replies_are_cut_to_their_first_statement() -> None:
    assert (
        first_statement("```sql\nSELECT name\nFROM singer;\n```\nThis lists names.")
        == "SELECT name FROM singer"
    )
    assert first_statement("  SELECT 1; SELECT 2") == "SELECT 1"


def kbqa(*args: str):
    from typer.testing import CliRunner

    from app.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_scores_two_files_and_a_models_predictions(tmp_path: Path) -> None:
    from models import build_tiny_causal_lm

    db_dir = spider_dir(tmp_path)
    gold, pred = gold_file(tmp_path)
    result = kbqa(
        "finetune", "eval-sql", "--gold", str(gold), "--pred", str(pred), "--db-dir", str(db_dir), "--json"
    )
    assert result.exit_code == 0, result.output
    rows = {row["difficulty"]: row for row in json.loads(result.stdout)}
    assert rows["all"]["execution_accuracy"] == 0.4 and rows["medium"]["exact_set_match"] == 1.0
    table = kbqa("finetune", "eval-sql", "--gold", str(gold), "--pred", str(pred), "--db-dir", str(db_dir))
    assert table.exit_code == 0 and "execution accuracy" in table.stdout
    assert kbqa("finetune", "eval-sql", "--gold", str(gold), "--db-dir", str(db_dir)).exit_code == 2

    # Spider's dev.json layout as gold, and a model generating the predictions for DB-GPT-Hub-style data
    model = build_tiny_causal_lm(tmp_path / "model")
    data = tmp_path / "dev.json"
    records = [
        {
            "db_id": "pets",
            "instruction": "pets 表: pet_id, pet_type, weight。\n有几只宠物？",
            "input": "",
            "output": "SELECT count(*) FROM pets",
            "difficulty": "easy",
        },
        {
            "db_id": "concert_singer",
            "instruction": "singer 表: name, age。\n列出歌手。",
            "input": "",
            "output": "SELECT name FROM singer",
        },
    ]
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "predicted.sql"
    args = ["finetune", "eval-sql", "--model", str(model), "--data", str(data), "--db-dir", str(db_dir)]
    result = kbqa(*args, "--max_new_tokens", "4", "--predictions", str(out), "--json")
    assert result.exit_code == 0, result.output
    rows = {row["difficulty"]: row for row in json.loads(result.stdout)}
    assert rows["all"]["count"] == 2 and rows["easy"]["count"] == 1
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[1] for line in lines] == ["pets", "concert_singer"]
    spider = tmp_path / "spider_dev.json"
    spider.write_text(
        json.dumps([{"db_id": r["db_id"], "query": r["output"]} for r in records]), encoding="utf-8"
    )
    scored = kbqa(
        "finetune", "eval-sql", "--gold", str(spider), "--pred", str(out), "--db-dir", str(db_dir), "--json"
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)[0]["execution_accuracy"] == rows["all"]["execution_accuracy"]
