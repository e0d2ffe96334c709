"""``mad store ...``: look inside feature stores."""

from __future__ import annotations

import json

import typer
from mad_pipeline.stages import store_info as stage
from rich.console import Console
from rich.table import Table

from .main import store_app


@store_app.command("info", help="Print a store's manifest and array shapes as a table.\n\n"
                   "Example:\n\n  mad store info ~/.cache/mad/stores/image/<key>.zarr")
def info_cmd(path: str = typer.Argument(..., help="Store path (a .zarr directory)."),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    info = stage.run(stage.StoreInfoConfig(path=path))
    if as_json:
        typer.echo(json.dumps(info))
        return
    console = Console()
    man = Table(title=f"{info['kind']} store", show_header=False)
    man.add_column("field", style="bold")
    man.add_column("value", overflow="fold")
    for k, v in info["manifest_rows"]:
        man.add_row(k, v)
    console.print(man)
    arr = Table(title="arrays")
    for col in ("name", "shape", "dtype", "chunks", "shards", "dims", "stored MB"):
        arr.add_column(col)
    for a in info["arrays"]:
        shards = str(tuple(a["shards"])) if a["shards"] else "-"
        arr.add_row(a["name"], str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])), shards,
                    ",".join(a["dims"]), f"{a['nbytes_stored'] / 1e6:.2f}")
    console.print(arr)


@store_app.command("ls", help="List the published stores in a cache.\n\nExample:\n\n  mad store ls --cache .mad-cache")
def ls_cmd(cache: str = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Cache root [env MAD_CACHE]."),
           kind: str = typer.Option(None, "--kind", help="Only this kind: image, text, index."),
           as_json: bool = typer.Option(False, "--json", help="Print one JSON list.")):
    from mad_pipeline.stages import store_ls

    rows = store_ls.run(store_ls.StoreLsConfig(cache=cache, kind=kind))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} stores in {store_ls.cache_root(cache)}/stores")
    for col in ("kind", "key", "rows", "teacher", "created", "MB"):
        table.add_column(col)
    for r in rows:
        created = (r["created"] or "")[:16].replace("T", " ")
        table.add_row(r["kind"], r["key"][:16], str(r["rows"]), r["teacher"], created, f"{r['bytes'] / 1e6:.1f}")
    Console().print(table)
