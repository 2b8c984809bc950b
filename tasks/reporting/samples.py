"""A round's sample for the UI: a few evolved and rejected candidates next to their parents.

The choice is deterministic (ids are content hashes, so ordering by id is a fixed, well-spread pick): the
first evolved rows by id, and rejected rows taken one reason at a time (the first row of each reason, then
the second, ...) so that a sample shows as many different reasons as it can.
"""

from __future__ import annotations

import re

from storage import ShardRef, StorageSettings, duck_connect, read_parquet_sql, total_rows
from tasks.core.summaries import RoundSummary
from tasks.core.text import parent_text

_WS = re.compile(r"\s+")


def trim(text: str | None, width: int) -> str:
    """A text on one line (whitespace runs as one space) of at most ``width`` characters: a longer one keeps
    its start and its end (where an evolution's addition usually is) around an ellipsis."""
    flat = _WS.sub(" ", text or "").strip()
    if len(flat) <= width:
        return flat
    tail = (width - 3) * 2 // 5
    head = width - 3 - tail
    return f"{flat[:head].rstrip()} … {flat[-tail:].lstrip()}"


def _uris(refs: list[ShardRef]) -> list[str]:
    return [r.uri for r in refs if r.rows]


def _pick(con, uris: list[str], limit: int, by_reason: bool) -> list[dict]:
    if not uris or limit <= 0:
        return []
    rank = "row_number() OVER (PARTITION BY reject_reason ORDER BY id)" if by_reason else "0"
    rows = con.execute(f"""
        SELECT id, parent_id, operation, instruction, input, response, reject_reason
        FROM (SELECT *, {rank} AS rank FROM {read_parquet_sql(uris)})
        ORDER BY rank, reject_reason, id LIMIT {int(limit)}
    """).fetchall()
    names = ("id", "parent_id", "operation", "instruction", "input", "response", "reject_reason")
    return [dict(zip(names, row, strict=True)) for row in rows]


def round_samples(pool_in: list[ShardRef], summary: RoundSummary, per_status: int = 5, width: int = 120,
                  settings: StorageSettings | None = None) -> list[dict[str, str]]:
    """Rows of a round's sample table: up to ``per_status`` evolved and ``per_status`` rejected candidates,
    each with its rejection reason, its parent (from the round's pool), its evolution and the response;
    texts on one line, at most ``width`` characters (Prefect's table cells do not wrap)."""
    evolved_uris, rejected_uris = _uris(summary.evolved_shards), _uris(summary.rejected_shards)
    if not evolved_uris and not rejected_uris:
        return []
    con = duck_connect(*(evolved_uris + rejected_uris + _uris(pool_in)), settings=settings)
    picked = _pick(con, evolved_uris, per_status, False) + _pick(con, rejected_uris, per_status, True)
    parents: dict[str, str] = {}
    if picked and total_rows(pool_in):
        ids = ", ".join("'" + r["parent_id"].replace("'", "''") + "'" for r in picked)
        for pid, instruction, input_text in con.execute(
                f"SELECT id, instruction, input FROM {read_parquet_sql(_uris(pool_in))} WHERE id IN ({ids})"
        ).fetchall():
            parents[pid] = parent_text({"instruction": instruction, "input": input_text})
    return [{
        "status": "rejected" if r["reject_reason"] else "evolved",
        "reason": r["reject_reason"] or "",
        "operation": r["operation"] or "",
        "parent": trim(parents.get(r["parent_id"], ""), width),
        "evolution": trim(parent_text({"instruction": r["instruction"] or "", "input": r["input"]}), width),
        "response": trim(r["response"], width),
    } for r in picked]
