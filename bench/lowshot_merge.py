"""One task's table and plot from several ``bench/lowshot.py`` outputs: a study run in parts (other fractions or
seeds, other invocations or machines) merged into the paper-style report, mean ± std over every seed found.

Each input is a ``lowshot.json`` (its ``tables``) or a ``report.json`` (its ``table``); a cell and seed present in
two inputs is refused (one experiment per cell). The inputs' per-seed values are kept as they were measured: nothing
is trained or evaluated here.

    python bench/lowshot_merge.py --task vqa --out docs/results/study-shipped/vqa-all \\
        docs/results/study-shipped/vqa-low/lowshot.json docs/results/study-shipped/vqa-high-gpu/lowshot.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table_of(path: Path, task: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable JSON file ({e})") from None
    table = data.get("table") or (data.get("tables") or {}).get(task)
    if not table or table.get("task") != task:
        raise SystemExit(f"error: {path}: no {task} table (expected a lowshot.json or a report.json)")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="lowshot.json or report.json files")
    ap.add_argument("--task", required=True, help="the task whose tables are merged (vqa, snli-ve, vcr)")
    ap.add_argument("--out", required=True, type=Path, help="folder for report.md / .csv / .png / .json")
    ap.add_argument("--title", default=None, help="the table's title (default: the first input's, merged)")
    args = ap.parse_args(argv)

    from mad_pipeline.errors import InputError
    from mad_pipeline.pipeline.report import aggregate, records_of_table, to_markdown, write_report

    tables = [table_of(p, args.task) for p in args.inputs]
    records = [r for p, t in zip(args.inputs, tables, strict=True) for r in records_of_table(t, source=str(p))]
    title = args.title or tables[0]["title"].replace(" (INCOMPLETE)", "") + f" {args.task} (merged)"
    try:
        table = aggregate(records, title=title)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    write_report(table, args.out, records=records)
    print(to_markdown(table))
    print(f"merged {len(args.inputs)} inputs, {len(records)} records; files in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
