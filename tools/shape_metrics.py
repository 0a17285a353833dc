"""Figures of the code's shape (issue #15): the longest functions, the places that execute SQL,
the hand-written retry loops. `python tools/shape_metrics.py [root]` (default: this checkout);
run it on two checkouts to compare.

- A function's length is its lines from `def` to its last line (decorators excluded).
- An SQL call site is a call of an asyncpg connection method (`execute`, `executemany`,
  `fetch`, `fetchrow`, `fetchval`, `copy_*`), of SQLAlchemy's `session.exec`/`session.execute`/
  `conn.execute`, or of the project's own SQL wrappers of the past (`run_sql`, `run`, `_exec`),
  in the services and the shared library (tests and migrations left out).
- A hand-written retry loop is a `while` loop that sleeps and either grows a delay (`backoff`,
  `delay` multiplied or passed through `min(...)`), adds jitter (`random`), or sleeps in an
  `except` handler (tries again after a failure).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SQL_METHODS = {
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "copy_records_to_table",
    "copy_from_query",
    "exec",
    "run_sql",
    "_exec",
}


def sources(root: Path) -> list[Path]:
    out = []
    for top in ("services", "shared/src", "src"):
        for path in sorted((root / top).rglob("*.py")):
            parts = set(path.parts)
            if "tests" in parts or "migrations" in parts:
                continue
            out.append(path)
    return out


def functions(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            end = node.end_lineno or node.lineno
            found.append((node.name, end - node.lineno + 1))
    return found


def sql_calls(tree: ast.AST) -> int:
    count = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in SQL_METHODS:
            count += 1
        elif name == "run" and isinstance(func, ast.Name) and node.args:
            count += 1  # the old `run(session, statement, params)` wrapper
    return count


def retry_loops(tree: ast.AST) -> int:
    count = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.While):
            continue
        text = ast.unparse(node)
        sleeps = "sleep(" in text
        grows = ("backoff" in text or "delay" in text) and ("* 2" in text or "min(" in text)
        sleeps_after_failure = any(
            isinstance(h, ast.ExceptHandler) and "sleep(" in ast.unparse(h) for h in ast.walk(node)
        )
        if sleeps and (grows or "random" in text or sleeps_after_failure):
            count += 1
    return count


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    lengths: list[tuple[int, str]] = []
    sql = retries = 0
    per_file_sql: dict[str, int] = {}
    for path in sources(root):
        tree = ast.parse(path.read_text())
        rel = str(path.relative_to(root))
        lengths += [(n, f"{rel}:{name}") for name, n in functions(tree)]
        calls = sql_calls(tree)
        sql += calls
        if calls:
            per_file_sql[rel] = calls
        retries += retry_loops(tree)
    lengths.sort(reverse=True)
    print(f"root: {root}")
    print("longest functions:")
    for n, where in lengths[:10]:
        print(f"  {n:4d}  {where}")
    print(f"SQL call sites: {sql}")
    for rel, calls in sorted(per_file_sql.items(), key=lambda kv: -kv[1]):
        print(f"  {calls:4d}  {rel}")
    print(f"hand-written retry loops: {retries}")


if __name__ == "__main__":
    main()
