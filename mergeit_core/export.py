"""Export the merged dataset in Alpaca format (instruction, input, output)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from mergeit_core.settings import SettingError
from mergeit_core.store import connect, fetch_table

EXPORT_FORMATS = (".jsonl", ".parquet")


def export_dataset(db_path: str | Path, out: str | Path) -> int:
    out = Path(out)
    if out.suffix not in EXPORT_FORMATS:
        raise SettingError(f"cannot export to {out}: the file name must end in {' or '.join(EXPORT_FORMATS)}")
    with connect(db_path, read_only=True) as conn:
        table = fetch_table(conn, "export/alpaca.sql")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        with out.open("w", encoding="utf-8") as handle:
            for row in table.to_pylist():
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return table.num_rows
