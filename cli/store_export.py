"""``mad store export``: pooled embeddings and their ids for retrieval tools (clip-retrieval's layout, faiss)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import store_export as stage
from rich.console import Console
from rich.table import Table

from .app import store_app

HELP = """Export a store's pooled embeddings (one per image or text, in the store's row order), optionally
L2-normalised, with their ids in the same order, for retrieval tools.

npy: OUT/img_emb/img_emb_0.npy (text_emb/ for a text store) + OUT/metadata/metadata_0.parquet, clip-retrieval's
embeddings layout. parquet: one file OUT with the ids and an embedding column. faiss: OUT/image.index (text.index) +
OUT/metadata/metadata_0.parquet, index row i = metadata row i (needs pip install 'mad-pipeline[faiss]').
Undecodable images (no embedding) are left out of every output.

Examples:

  mad store export ~/.cache/mad/stores/image/<key>.zarr --to faiss --normalize --out coco-index

  mad store export <key> --to npy --index <index key> --out coco-emb

  mad store export <key> --to parquet --normalize --out coco.parquet
"""


@store_app.command("export", help=HELP)
def export_cmd(
    store: str = typer.Argument(..., help="Image or text store: a directory, URL, or key (prefix) in --cache."),
    to: str = typer.Option(..., "--to", help="npy, parquet or faiss."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (npy, faiss) or file (parquet)."),
    normalize: bool = typer.Option(False, "--normalize", help="L2-normalise each embedding (faiss: inner product)."),
    index: str = typer.Option(None, "--index", help="The dataset's index store: add each row's sample ids."),
    cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Cache for store keys (env MAD_CACHE)."),
    index_factory: str = typer.Option("Flat", "--index-factory", help="faiss.index_factory string, e.g. "
                                      "IVF4096,PQ64 (trained on the first --train-rows rows). Default: exact."),
    train_rows: int = typer.Option(100_000, "--train-rows", help="Rows a trained faiss index learns from."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", help="Rows read per step (memory, not results)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    cfg = stage.ExportConfig(store=store, to=to, out=out, normalize=normalize, index=index, cache=cache,
                             index_factory=index_factory, train_rows=train_rows, batch_rows=batch_rows, force=force,
                             progress=not (quiet or as_json))
    res = stage.run(cfg)
    if as_json:
        typer.echo(json.dumps(res.as_dict()))
        return
    table = Table(title=f"mad store export ({res.seconds:.1f} s)")
    for col in ("store", "to", "rows", "dim", "skipped", "normalized"):
        table.add_column(col)
    table.add_row(res.kind, res.to, str(res.rows), str(res.dim), str(res.skipped), "yes" if res.normalized else "no")
    console = Console()
    console.print(table)
    for f in res.files:
        console.print(f, soft_wrap=True, markup=False, highlight=False)
