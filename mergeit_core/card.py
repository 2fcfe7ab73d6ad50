"""A Hugging Face style dataset card for an export: what is in it, where it came from, which
models and settings made it, and how to trace any row back to its source file and line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mergeit_core import figures
from mergeit_core.store import connect, run_sql

CARD_MARK = "<!-- written by mergeit export: rewritten on each export -->"


def card_path(out: str | Path) -> Path:
    """README.md beside the export, as the Hugging Face Hub expects; if the folder already holds
    a README.md that mergeit did not write, the card goes to ``<export name>.README.md`` instead,
    so a project's own README is never overwritten."""
    out = Path(out)
    readme = out.parent / "README.md"
    if not readme.exists() or CARD_MARK in readme.read_text(encoding="utf-8", errors="replace")[:4096]:
        return readme
    return out.parent / f"{out.stem}.README.md"


def write_card(db_path: str | Path, out: str | Path) -> Path:
    path = card_path(out)
    path.write_text(dataset_card(db_path, Path(out).name), encoding="utf-8")
    return path


def _rows(db_path: str | Path, name: str) -> list[dict]:
    with connect(db_path) as conn:
        result = run_sql(conn, name)
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row)) for row in result.fetchall()]


def _size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "1M<n<10M"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _settings(rows: list[dict], asset: str) -> str:
    """`budget 75 (12 clusters)`; several lines when clusters ran with different settings."""
    found = [(json.loads(r["settings"]) if r["settings"] else None, r["clusters"]) for r in rows if r["asset_name"] == asset]
    if not found:
        return "not run"
    return "; ".join(
        (", ".join(f"{k} {_setting(v)}" for k, v in values.items()) if values else "not recorded") + f" ({n} clusters)"
        for values, n in found
    )


def _setting(value: object) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def dataset_card(db_path: str | Path, data_file: str) -> str:
    counts = figures.funnel(db_path)
    outcomes = figures.merge_outcomes(db_path)
    reasons = figures.reason_counts(outcomes)
    sizes = sorted(figures.cluster_sizes(db_path).values())
    embedding_models = _rows(db_path, "figures/card_embedding_models.sql")
    settings = _rows(db_path, "figures/card_settings.sql")
    merge_models = _rows(db_path, "figures/card_merge_models.sql")
    files = _rows(db_path, "figures/card_source_files.sql")
    with connect(db_path) as conn:
        [(example,)] = run_sql(conn, "figures/card_example_sample.sql").fetchall()
    example_file = Path(files[0]["source_file"]).name if files else "data.jsonl"
    front_matter = "\n".join([
        "---",
        "pretty_name: mergeit merged instruction dataset",
        "task_categories:",
        "- text-generation",
        "tags:",
        "- instruction-tuning",
        "- mergeit",
        "size_categories:",
        f"- {_size_category(counts.final_rows)}",
        "configs:",
        "- config_name: default",
        f"  data_files: {data_file}",
        "---",
    ])
    cluster_line = (
        f"{len(sizes)} topic clusters (rows per cluster: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]})"
        if sizes else "no clusters"
    )
    sections = [
        front_matter,
        CARD_MARK,
        "# mergeit merged instruction dataset",
        f"`{data_file}` holds **{counts.final_rows:,}** instruction-tuning samples in Alpaca format "
        "(`instruction`, `input`, `output`), made by mergeit, an implementation of \"MergeIT: From Selection "
        "to Merging for Efficient Instruction Tuning\" (Cai et al.): topic-aware selection followed by LLM "
        "merging of similar samples. "
        "The sources' licences apply to this data.",
        "## Counts",
        _table(["step", "rows"], [
            ["source rows read", f"{counts.rows_read:,}"],
            ["accepted (valid, not duplicate)", f"{counts.accepted:,}"],
            ["selected (facility location per cluster)", f"{counts.selected:,}"],
            ["merge groups", f"{counts.merge_groups:,}"],
            ["merged samples kept", f"{counts.merged:,} (made from {counts.rows_in_merges:,} selected rows)"],
            ["selected rows kept as they are", f"{counts.kept_selected:,}"],
            ["**final samples**", f"**{counts.final_rows:,}**"],
        ]),
        "Funnel: " + " → ".join(f"{v:,}" for v in (counts.rows_read, counts.accepted, counts.selected, counts.final_rows))
        + f" ({counts.final_rows / counts.accepted:.1%} of accepted rows)." if counts.accepted else "",
        "## How it was made",
        _table(["what", "value"], [
            ["embedding model", "; ".join(f"{m['model']} ({m['rows']:,} rows)" for m in embedding_models) or "–"],
            ["clustering", cluster_line],
            ["selection", _settings(settings, "selected_subset")],
            ["merge groups", _settings(settings, "merge_pairs")],
            ["quality gate", _settings(settings, "merged_samples")],
            ["merge model", "; ".join(
                f"{m['model']} via {m['backend']}, prompt {m['prompt_version']}, sampling {m['sampling_params']} ({m['groups']} groups)"
                for m in merge_models
            ) or "no merges"],
        ]),
        "## Merge outcomes",
        "Every merge group either becomes one merged sample or keeps its source rows, for the reason shown.",
        _table(["outcome", "groups"], [[reason, n] for reason, n in reasons.items()]) if reasons else "No merge groups.",
        "## Source files",
        _table(
            ["file", "format", "bytes", "sha256", "rows read", "accepted", "rejected", "duplicate"],
            [[Path(f["source_file"]).name, f["file_format"], f"{f['size_bytes']:,}", f"`{f['content_hash']}`",
              f["rows_read"], f["accepted"], f["rejected"], f["duplicate"]] for f in files],
        ),
        "## Tracing a row",
        "Every sample keeps its lineage in the DuckDB file it was exported from. The export is ordered by "
        "`sample_id`: row *n* of the file is "
        "`SELECT sample_id FROM merged_dataset ORDER BY sample_id LIMIT 1 OFFSET n - 1`. "
        "A sample beside every source row behind it (file, line, model, prompt version, Dagster run):",
        f"```bash\nmergeit lineage {example} --db mergeit.duckdb\n```",
        f"```sql\nSELECT * FROM lineage WHERE sample_id = '{example}';\n"
        "-- every final sample built from a given file\n"
        f"SELECT DISTINCT sample_id FROM lineage WHERE source_file LIKE '%{example_file}';\n```",
        "## Loading",
        f"```python\nfrom datasets import load_dataset\n"
        f"load_dataset(\"{'parquet' if data_file.endswith('.parquet') else 'json'}\", data_files=\"{data_file}\")\n```",
    ]
    return "\n\n".join(section for section in sections if section) + "\n"
