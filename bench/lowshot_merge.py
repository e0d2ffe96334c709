"""One task's table and plot from several ``bench/lowshot.py`` outputs: a study run in parts (other fractions or
seeds, other invocations or machines) merged into the paper-style report, mean ± std over every seed found.

Each input is a ``lowshot.json`` (its ``tables``) or a ``report.json`` (its ``table``); a cell and seed present in
two inputs is refused (one experiment per cell). The inputs' per-seed values are kept as they were measured: nothing
is trained or evaluated here. An input may end in ``:OLD=NEW,...``: only those of its methods are taken, each under
its new name (a run made under another method name with the study's settings, such as ``baseline-cap1000`` for the
baseline at a larger cap).

    python bench/lowshot_merge.py --task vqa --out docs/results/study-shipped/vqa-all \\
        docs/results/study-shipped/vqa-low/lowshot.json docs/results/study-shipped/vqa-high-gpu/lowshot.json
    python bench/lowshot_merge.py --task vcr --out DIR A/lowshot.json \\
        'B/lowshot.json:baseline-cap1000=baseline,full-cap1000=full'

``--ablation``: the inputs are parts of an ablation study (``configs/ablation.yaml``); the share table
(``ablation.md`` / ``.csv``: MAD minus each variant, paired by seed) is written too, with the selection policies'
methods of the first input that records them (a ``lowshot.json``'s ``policies``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_input(path: Path, task: str) -> tuple[dict, dict]:
    """The input's whole JSON and its ``task`` table."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable JSON file ({e})") from None
    table = data.get("table") or (data.get("tables") or {}).get(task)
    if not table or table.get("task") != task:
        raise SystemExit(f"error: {path}: no {task} table (expected a lowshot.json or a report.json)")
    return data, table


def parse_input(spec: str) -> tuple[Path, dict[str, str] | None]:
    """``PATH`` or ``PATH:OLD=NEW,...`` -> the path and the methods to take from it (old name -> new; None: all)."""
    path, sep, tail = spec.rpartition(":")
    if not sep or "=" not in tail or Path(spec).exists():
        return Path(spec), None
    names: dict[str, str] = {}
    for pair in tail.split(","):
        old, eq, new = (x.strip() for x in pair.partition("="))
        if not (old and eq and new):
            raise SystemExit(f"error: {spec}: {pair!r} is not OLD=NEW (a method's name in the input = its name here)")
        names[old] = new
    return Path(path), names


def records_of(path: Path, table: dict, names: dict[str, str] | None) -> list[dict]:
    """The table's records, only the methods ``names`` lists (renamed) when given."""
    from mad_pipeline.pipeline.report import records_of_table

    records = records_of_table(table, source=str(path))
    if names is None:
        return records
    missing = sorted(set(names) - {r["method"] for r in records})
    if missing:
        raise SystemExit(f"error: {path}: no method {missing[0]} in its {table['task']} table")
    return [{**r, "method": names[r["method"]]} for r in records if r["method"] in names]


def write_ablation(table: dict, inputs: list[dict], out: Path) -> None:
    """The share table of a merged ablation, as ``bench/lowshot.py`` writes it for one invocation (``inputs``: the
    inputs' JSON)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script, python has put it there already
    import lowshot

    policies = next((d["policies"] for d in inputs if d.get("policies")), None)
    if not policies:
        raise SystemExit("error: --ablation: no input records the selection policies' methods (a lowshot.json "
                         "of the ablation config)")
    abl = {table["task"]: lowshot.ablation_sections(table, policies)}
    (out / "ablation.md").write_text(lowshot.ablation_markdown(abl, len(table["seeds"])))
    (out / "ablation.csv").write_text(lowshot.ablation_csv(abl))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="lowshot.json or report.json files, each optionally PATH:OLD=NEW,...")
    ap.add_argument("--task", required=True, help="the task whose tables are merged (vqa, snli-ve, vcr)")
    ap.add_argument("--out", required=True, type=Path, help="folder for report.md / .csv / .png / .json")
    ap.add_argument("--title", default=None, help="the table's title (default: the first input's, merged)")
    ap.add_argument("--ablation", action="store_true", help="also write the share table (ablation.md / .csv)")
    args = ap.parse_args(argv)

    from mad_pipeline.errors import InputError
    from mad_pipeline.pipeline.report import aggregate, to_markdown, write_report

    inputs = [parse_input(spec) for spec in args.inputs]
    read = [read_input(p, args.task) for p, _ in inputs]
    tables = [t for _, t in read]
    records = [r for (p, names), t in zip(inputs, tables, strict=True) for r in records_of(p, t, names)]
    title = args.title or tables[0]["title"].replace(" (INCOMPLETE)", "") + f" {args.task} (merged)"
    try:
        table = aggregate(records, title=title)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    write_report(table, args.out, records=records)
    print(to_markdown(table))
    if args.ablation:
        write_ablation(table, [d for d, _ in read], args.out)
    print(f"merged {len(args.inputs)} inputs, {len(records)} records; files in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
