"""Text-to-SQL evaluation as DB-GPT-Hub scores it (after Spider): execution accuracy and exact-set match.

Databases are laid out as Spider's: `<db_dir>/<db_id>/<db_id>.sqlite`. A query runs read-only (the file is
opened with `mode=ro`, `query_only` is on and nothing may be attached) and is stopped at a timeout; a query
that fails or runs out of time is wrong. Result sets are compared as multisets, in order only when the gold
query has a top-level ORDER BY. Exact-set match parses both queries with sqlglot, lowercases identifiers,
resolves table aliases, masks literal values, and compares each clause as a set (its select list, tables,
AND-ed conditions, grouping) or, for ORDER BY, as a sequence.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import DatasetError
from llm.types import Message

ALL = "all"


@dataclass(frozen=True)
class SqlExample:
    """A gold query, the database it runs on, and its difficulty when the gold file gives one."""

    gold: str
    db_id: str
    difficulty: str = ""


@dataclass(frozen=True)
class SqlScore:
    """One difficulty's (or all examples') count, execution accuracy and exact-set match."""

    difficulty: str
    count: int
    execution_accuracy: float
    exact_set_match: float


def read_gold(path: Path) -> list[SqlExample]:
    """Return gold examples from `SQL\\tdb_id[\\tdifficulty]` lines, or Spider/DB-GPT-Hub JSON records.

    A record holds the query as `query`, `sql` or `output`, its `db_id`, and `difficulty` or `hardness`.
    """
    if path.suffix.lower() in (".json", ".jsonl"):
        from finetune.records import load_records

        examples = []
        for index, record in enumerate(load_records(path)):
            query = next(
                (record.get(k) for k in ("query", "sql", "output") if isinstance(record, dict)), None
            )
            if not isinstance(query, str) or not isinstance(record.get("db_id"), str):
                raise DatasetError(
                    f"{path}: record {index}: needs the query (query, sql or output) and db_id"
                )
            difficulty = record.get("difficulty") or record.get("hardness") or ""
            examples.append(SqlExample(query.strip(), record["db_id"], str(difficulty)))
        return examples
    examples = []
    for index, fields in enumerate(_lines(path)):
        if len(fields) < 2:
            raise DatasetError(f"{path}: line {index + 1}: expected SQL<TAB>db_id[<TAB>difficulty]")
        examples.append(SqlExample(fields[0], fields[1], fields[2] if len(fields) > 2 else ""))
    return examples


def read_predictions(path: Path) -> list[str]:
    """Return predicted queries, one a line (a `\\tdb_id` after the query is allowed and dropped)."""
    return [fields[0] for fields in _lines(path)]


def execute(database: Path, sql: str, timeout: float) -> list[tuple] | None:
    """Return the rows `sql` gives on `database`, read-only; None when it fails or runs past `timeout` s."""
    uri = f"{database.resolve().as_uri()}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout)
    try:
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # ATTACH could create a file
        connection.execute("PRAGMA query_only = ON")
        deadline = time.monotonic() + timeout
        connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        return connection.execute(sql).fetchall()
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError):  # Warning: two statements at once
        return None
    finally:
        connection.close()


def execution_match(prediction: str, gold: str, database: Path, timeout: float) -> bool:
    """Return whether `prediction` gives the gold query's result, in order only where the gold orders it."""
    expected = execute(database, gold, timeout)
    if expected is None:
        raise DatasetError(f"the gold query fails on {database}: {gold}")
    found = execute(database, prediction, timeout)
    if found is None:
        return False
    if _ordered(gold):
        return found == expected
    return Counter(found) == Counter(expected)


def exact_set_match(prediction: str, gold: str) -> bool:
    """Return whether two queries have the same clauses once normalised (see the module docstring)."""
    predicted, expected = _components(prediction), _components(gold)
    return predicted is not None and predicted == expected


def evaluate_sql(
    examples: Sequence[SqlExample],
    predictions: Sequence[str],
    db_dir: Path,
    timeout: float = 5.0,
    advance: Callable[[], None] | None = None,
) -> list[SqlScore]:
    """Return the scores of all examples, then of each difficulty the gold gives, in order of appearance."""
    if len(predictions) != len(examples):
        raise DatasetError(f"{len(predictions)} predictions for {len(examples)} gold queries")
    results: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for example, prediction in zip(examples, predictions, strict=True):
        database = db_dir / example.db_id / f"{example.db_id}.sqlite"
        if not database.is_file():
            raise DatasetError(f"no database {database} (expected <db_dir>/<db_id>/<db_id>.sqlite)")
        outcome = (
            execution_match(prediction, example.gold, database, timeout),
            exact_set_match(prediction, example.gold),
        )
        results[ALL].append(outcome)
        if example.difficulty:
            results[example.difficulty].append(outcome)
        if advance is not None:
            advance()
    return [
        SqlScore(
            name,
            len(outcomes),
            sum(ex for ex, _ in outcomes) / len(outcomes),
            sum(em for _, em in outcomes) / len(outcomes),
        )
        for name, outcomes in results.items()
    ]


def read_sql_dataset(path: Path) -> tuple[list[SqlExample], list[tuple[Message, ...]]]:
    """Return the gold examples and prompts of DB-GPT-Hub-style records: alpaca fields with `db_id`."""
    from finetune.readers import Columns, parse_alpaca
    from finetune.records import Malformed, load_records

    examples, prompts = [], []
    for index, record in enumerate(load_records(path)):
        try:
            if not isinstance(record, dict) or not isinstance(record.get("db_id"), str):
                raise Malformed("needs instruction, output and db_id")
            conversation = parse_alpaca(record, Columns(), ranking=False)
        except Malformed as error:
            raise DatasetError(f"{path}: record {index}: {error}") from None
        *prompt, reply = conversation.messages
        difficulty = record.get("difficulty") or record.get("hardness") or ""
        examples.append(SqlExample(reply.content.strip(), record["db_id"], str(difficulty)))
        prompts.append(tuple(prompt))
    return examples, prompts


def predict_sql(
    generate: Callable[[list[Message]], str],
    prompts: Sequence[Sequence[Message]],
    advance: Callable[[], None] | None = None,
) -> list[str]:
    """Return the query in the model's reply to each prompt (see first_statement)."""
    predictions = []
    for prompt in prompts:
        predictions.append(first_statement(generate(list(prompt))))
        if advance is not None:
            advance()
    return predictions


def first_statement(reply: str) -> str:
    """Return the SQL of a model's reply: inside a code fence if there is one, up to the first `;`, one line."""
    text = reply.strip()
    if "```" in text:
        text = text.split("```")[1].removeprefix("sql").removeprefix("SQL")
    return " ".join(text.split(";")[0].split())


def _lines(path: Path) -> list[list[str]]:
    """Return the tab-separated fields of each non-blank line of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read: {error}") from None
    return [[field.strip() for field in line.split("\t")] for line in text.splitlines() if line.strip()]


def _parse(sql: str) -> Any:
    """Return the sqlglot tree of one query, or None when it does not parse."""
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        return sqlglot.parse_one(sql, read="sqlite")
    except SqlglotError:
        return None


def _ordered(sql: str) -> bool:
    """Return whether a query's outermost SELECT has an ORDER BY (so its row order counts)."""
    tree = _parse(sql)
    return tree is not None and tree.args.get("order") is not None


def _components(sql: str) -> Any:
    """Return a query's normalised clauses, comparable with ==; None when it does not parse."""
    from sqlglot import exp

    tree = _parse(sql)
    if tree is None:
        return None
    tables = {table.alias_or_name.lower(): table.name.lower() for table in tree.find_all(exp.Table)}
    single = len(set(tables.values())) == 1

    def normalise(node: Any) -> Any:
        if isinstance(node, exp.Literal):
            return exp.Placeholder()
        # Spider's gold queries write strings in double quotes, which SQLite reads as text when no column
        # has that name: an unqualified double-quoted name is masked like a literal.
        if isinstance(node, exp.Column) and not node.table and node.this.args.get("quoted"):
            return exp.Placeholder()
        if isinstance(node, exp.Identifier):
            return exp.to_identifier(node.name.lower())
        if isinstance(node, exp.Alias):  # a select item's alias names nothing the result compares
            return node.this
        if isinstance(node, exp.Column) and node.table:
            table = tables.get(node.table.lower(), node.table.lower())
            return exp.column(node.name.lower(), None if single else table)
        if isinstance(node, exp.Table):
            return exp.table_(node.name.lower())
        return node

    return _clauses(tree.transform(normalise))


def _clauses(node: Any) -> Any:
    """Return the clauses of a normalised query: sets where order does not matter, a tuple for ORDER BY."""
    from sqlglot import exp

    if isinstance(node, exp.SetOperation):
        return (
            type(node).__name__,
            bool(node.args.get("distinct")),
            _clauses(node.left),
            _clauses(node.right),
        )
    if not isinstance(node, exp.Select):
        return ("statement", node.sql())

    def conjuncts(condition: Any) -> frozenset[str]:
        if condition is None:
            return frozenset()
        parts = condition.flatten() if isinstance(condition, exp.And) else [condition]
        return frozenset(part.sql() for part in parts)

    def clause(name: str) -> Any:
        found = node.args.get(name)
        return found.this if found is not None else None

    sources = [node.args["from_"].this] if node.args.get("from_") else []
    joins = node.args.get("joins") or []
    join_conditions = frozenset().union(*(conjuncts(join.args.get("on")) for join in joins))
    order = node.args.get("order")
    return (
        bool(node.args.get("distinct")),
        frozenset(item.sql() for item in node.expressions),
        frozenset(source.sql() for source in [*sources, *(join.this for join in joins)]),
        join_conditions,
        conjuncts(clause("where")),
        frozenset(item.sql() for item in (node.args["group"].expressions if node.args.get("group") else [])),
        conjuncts(clause("having")),
        tuple(item.sql() for item in order.expressions) if order else (),
        node.args.get("limit") is not None,
    )
