"""``mad student``: pretrain the shipped ``shapes-vilt-tiny`` and ``shapes-vilt-mini-l3`` students (ViLT's objectives
on the shapes world)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import student_pretrain as stage
from rich.console import Console
from rich.table import Table

from mad_pipeline.progress import quiet_library_bars

from .app import app

_D = stage.StudentPretrainConfig()

student_app = typer.Typer(help="Pretrain cross-modal students.\n\n"
                          "Example:\n\n  mad student pretrain --out shapes-vilt-tiny", no_args_is_help=True)
app.add_typer(student_app, name="student")

PRETRAIN_HELP = """Pretrain a ViLT student (vilt-tiny; --student) on the shapes world's image-caption pairs with \
ViLT's own objectives: masked language modelling (15% of caption tokens, BERT's 80/10/10) and image-text \
matching (half the captions replaced by non-matching ones: another scene's caption, or, once ITM has learned \
those, a hard one with one colour, shape or place changed). ITM joins after a phase of MLM alone (--itm-start). \
No task labels, no teacher features, never a colour+shape pair of the shift split. Then measures ITM and MLM \
accuracy and probes (first object's colour and shape, object count; fine-tuned, and linear) on held-out scenes, \
against a from-scratch model given the same number of labelled steps.

Cached by content key under the cache root (runs/student-pretrain/KEY/): the same settings again print the \
cached figures without training. It is also a `mad run` stage (init: student-pretrain, these settings under \
student_pretrain:), with the same key and cache entry. The weights are transformers' ViltForMaskedLM layout: \
`mad distill --pretrained DIR` (or `--init pretrained` for the shipped copies, vilt-tiny's and vilt-mini-l3's) \
starts the student from them.

Examples:

  mad student pretrain --out shapes-vilt-tiny

  mad student pretrain --student vilt-mini-l3 --out shapes-vilt-mini-l3

  mad student pretrain --steps 20 --eval-size 64 --probe-steps 10 --out /tmp/pt --json
"""


@student_app.command("pretrain", help=PRETRAIN_HELP)
def pretrain_cmd(
    out: Path = typer.Option(None, "--out", "-o", help="Also copy the weights directory here."),
    student: str = typer.Option(_D.student, "--student",
                                help=f"Student preset ({stage.IMAGE_SIZE} px images: {', '.join(stage.PRESETS)})."),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed of the scenes, captions, negatives, masks and init."),
    steps: int = typer.Option(_D.steps, "--steps", help="Pretraining steps."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", help="Images per step."),
    pool_size: int = typer.Option(_D.pool_size, "--pool-size", help="Distinct training scenes."),
    lr: float = typer.Option(_D.lr, "--lr", help="Peak learning rate (AdamW, warm-up, cosine decay)."),
    warmup: int = typer.Option(_D.warmup, "--warmup", help="Warm-up steps."),
    mask_prob: float = typer.Option(_D.mask_prob, "--mask-prob", help="MLM: share of caption tokens predicted."),
    negative_fraction: float = typer.Option(_D.negative_fraction, "--negative-fraction",
                                            help="ITM: share of non-matching captions."),
    hard_fraction: float = typer.Option(_D.hard_fraction, "--hard-fraction",
                                        help="ITM: share of the non-matching captions that are hard negatives."),
    hard_ramp: float = typer.Option(_D.hard_ramp, "--hard-ramp",
                                    help="ITM: share of the steps over which hard negatives ramp in, once let in."),
    itm_weight: float = typer.Option(_D.itm_weight, "--itm-weight", help="ITM loss weight (MLM's is 1)."),
    itm_start: float = typer.Option(_D.itm_start, "--itm-start",
                                    help="Share of the steps of MLM alone before ITM joins."),
    hard_gate: float = typer.Option(_D.hard_gate, "--hard-gate",
                                    help="ITM batch accuracy on easy negatives that lets hard negatives in."),
    pos_init_std: float = typer.Option(_D.pos_init_std, "--pos-init-std",
                                       help="Std of the patches' initial position embedding (0: zeros)."),
    cell_steps: int = typer.Option(_D.cell_steps, "--cell-steps",
                                   help="Image phase: steps of each cell's shape and colour from the image, first."),
    place_mask: float = typer.Option(_D.place_mask, "--place-mask",
                                     help="MLM: share of captions with one whole place masked besides."),
    itm_pooler: bool = typer.Option(_D.itm_pooler, "--itm-pooler/--no-itm-pooler",
                                    help="Save the pooler as the ITM head's: finetuned students draw their own."),
    eval_size: int = typer.Option(_D.eval_size, "--eval-size", help="Held-out scenes measured (0: no figures)."),
    probe_steps: int = typer.Option(_D.probe_steps, "--probe-steps",
                                    help="Labelled steps of the comparison (probes, from-scratch model)."),
    probe_train: int = typer.Option(_D.probe_train, "--probe-train", help="Training scenes of the probes."),
    cache: Path = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Cache root [env MAD_CACHE]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    if quiet or as_json:
        quiet_library_bars()
    cfg = stage.StudentPretrainConfig(
        student=student, seed=seed, steps=steps, batch_size=batch_size, pool_size=pool_size, lr=lr, warmup=warmup,
        mask_prob=mask_prob, negative_fraction=negative_fraction, hard_fraction=hard_fraction, hard_ramp=hard_ramp,
        itm_weight=itm_weight, itm_start=itm_start, hard_gate=hard_gate, pos_init_std=pos_init_std,
        cell_steps=cell_steps, place_mask=place_mask, itm_pooler=itm_pooler, eval_size=eval_size,
        probe_steps=probe_steps, probe_train=probe_train, out=out, cache=cache, progress=not (quiet or as_json))
    result = stage.run(cfg)
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    con = Console()
    t = result.timing
    where = result.out or result.path
    con.print(f"{cfg.student} -> {where}  ({'cached' if result.cached else 'trained'}: {cfg.steps} steps, "
              f"{t['step_s']:.2f} s/step; key {result.key[:12]})", soft_wrap=True)
    if result.figures:
        con.print(figures_table(result.figures))


def figures_table(figures: dict) -> Table:
    table = Table(title="held-out scenes: pretrained vs from scratch (same labelled steps)")
    for col in ("figure", "pretrained (%)", "from scratch (%)"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for name, value in figures["pretrained"].items():
        other = figures["scratch"].get(name)  # the linear probes are the pretrained model's only
        table.add_row(name.replace("_", " "), f"{100 * value:.1f}", "-" if other is None else f"{100 * other:.1f}")
    return table
