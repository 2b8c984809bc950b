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


def round_samples(pool_in: list[ShardRef], summary: RoundSummary, per_status: int = 5,
                  settings: StorageSettings | None = None) -> list[dict[str, str]]:
    """A round's sample: up to ``per_status`` evolved and ``per_status`` rejected candidates, each with its
    rejection reason, its parent (from the round's pool), its evolution and the response, texts in full."""
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
        "parent": parents.get(r["parent_id"], ""),
        "evolution": parent_text({"instruction": r["instruction"] or "", "input": r["input"]}),
        "response": r["response"] or "",
    } for r in picked]


CELL_WIDTH = 16  # characters per text cell: the table's five columns fit a 1280-pixel window beside the UI's panels
TABLE_TEXTS = ("parent", "evolution")  # the response is in the full row only: a third text column does not fit


def samples_table(rows: list[dict[str, str]], width: int = CELL_WIDTH) -> list[dict[str, object]]:
    """The UI's sample table: a row number, the outcome (``evolved`` or the reject reason), the operation, then
    parent and evolution on one line of at most ``width`` characters each (Prefect's table cells do not wrap);
    row ``n`` in full, its response too, is section ``n`` of ``samples_markdown``."""
    return [{"#": n, "outcome": r["reason"] or "evolved", "operation": r["operation"],
             **{k: trim(r[k], width) for k in TABLE_TEXTS}} for n, r in enumerate(rows, 1)]


def _fenced(text: str) -> list[str]:
    runs = [len(m) for m in re.findall(r"`+", text)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [fence + "text", text, fence]


def samples_markdown(rows: list[dict[str, str]], title: str) -> str:
    """The sample's rows in full, numbered as in ``samples_table``: the page a table row's "full row" is on."""
    lines = [f"# {title}", ""]
    for n, r in enumerate(rows, 1):
        lines += [f"## {n}. {r['reason'] or 'evolved'} · {r['operation']}", ""]
        for label in ("parent", "evolution", "response"):
            lines += [f"**{label}**", "", *_fenced(r[label]), ""]
    return "\n".join(lines)
