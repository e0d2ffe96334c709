"""A trained student's directory is a transformers model: `ViltForQuestionAnswering.from_pretrained(RUN/student)` and
`ViltProcessor.from_pretrained(RUN/student)`, in a process that never imports mad, give `mad eval`'s answers; the
model card's snippet runs as written; SNLI-VE (three labels) and VCR (one score per pair) load the same way with the
same logits as mad's own forward; the directory layout of earlier versions still loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES
from mad_pipeline.stages.distill import DistillConfig
from mad_pipeline.stages.distill import run as distill_run
from PIL import Image

from mad_pipeline.data import load_dataset
from mad_pipeline.losses import MADConfig
from mad_pipeline.students import StudentError, build_student, load_student
from mad_pipeline.tasks import get_task
from mad_pipeline.training.config import TrainConfig

# Runs with transformers alone: what a user of the student directory runs. mad must never be imported.
HF_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
from transformers import ViltForQuestionAnswering, ViltProcessor

student, cases, card = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
processor = ViltProcessor.from_pretrained(student)
model = ViltForQuestionAnswering.from_pretrained(student).eval()
answers = []
with torch.no_grad():
    for case in cases:
        inputs = processor(Image.open(case["image"]).convert("RGB"), case["question"], return_tensors="pt")
        answers.append(model.config.id2label[model(**inputs).logits.argmax(-1).item()])
import contextlib, io
out = io.StringIO()
with contextlib.redirect_stdout(out):
    exec(card, {})  # the model card's snippet, as written (paths filled in)
assert "mad_pipeline" not in sys.modules, sorted(m for m in sys.modules if m.startswith("mad"))
print(json.dumps({"answers": answers, "card": out.getvalue().strip(), "labels": model.config.num_labels}))
"""


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
    """A tiny VQA student trained by `mad distill` on a 16-scene shapes world (the plain-finetuning objective: what is
    saved does not depend on the objective, and it needs no teacher), and the world."""
    from mad_pipeline.shapes.formats import write_dataset

    world = tmp_path_factory.mktemp("shapes-hf")
    write_dataset(world, size=16, seed=0)
    out = tmp_path_factory.mktemp("hf-run") / "run"
    distill_run(DistillConfig(task="vqa", data_root=world / "vqa", out=out, teacher=None,
                              mad=MADConfig.from_switches("baseline"), vocab_min_count=1, progress=False,
                              cache=tmp_path_factory.mktemp("hf-cache"),
                              train=TrainConfig(steps=6, batch_size=8, eval_every=0, log_every=6, num_workers=0)),
                log=lambda m: None)
    return out, world


def _cli(*args: str) -> dict:
    from mad_pipeline.cli.main import _register, app
    from typer.testing import CliRunner

    _register()
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def _card_snippet(student_dir: Path, image: Path, question: str) -> str:
    card = (student_dir / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = code.replace("path/to/student", str(student_dir)).replace("photo.jpg", str(image))
    return re.sub(r'processor\(image, "[^"]*"', f"processor(image, {question!r}", code)


def test_vqa_student_loads_with_transformers_alone_and_answers_as_mad_eval(vqa_run, tmp_path):
    run, world = vqa_run
    student_dir = run / "student"
    preds_file = tmp_path / "val.json"
    ev = _cli("eval", "--run", str(run), "--split", "val", "--out", str(preds_file), "--json")
    assert ev["n"] > 3
    by_qid = {p["question_id"]: p["answer"] for p in json.loads(preds_file.read_text())}

    val = load_dataset("vqa", world / "vqa", split="val")
    picked, seen = [], set()
    for s in val.samples:  # three questions on three different images
        if s.image not in seen:
            seen.add(s.image)
            picked.append(s)
        if len(picked) == 3:
            break
    cases = [{"image": str(val.root / s.image), "question": s.texts[0]} for s in picked]
    card = _card_snippet(student_dir, Path(cases[0]["image"]), cases[0]["question"])
    proc = subprocess.run([sys.executable, "-c", HF_SCRIPT, str(student_dir), json.dumps(cases), card],
                          capture_output=True, text=True, timeout=300, env={**_env(), "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    vocab = json.loads((run / "vocab.json").read_text())["answers"]
    assert got["labels"] == len(vocab)  # id2label is the answer vocabulary
    expected = [by_qid[int(s.meta["question_id"])] for s in picked]
    assert got["answers"] == expected  # transformers alone == mad eval, on three images
    assert got["card"] == expected[0]  # the model card's snippet, run as written

    # `mad predict` on the same run gives the same answer as well
    pred = _cli("predict", "--run", str(run), "--image", cases[1]["image"], "--text", cases[1]["question"], "--json")
    assert pred["predictions"][0]["label"] == expected[1]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("MAD_PLUGINS",)}


def test_student_dir_is_a_transformers_checkpoint_with_processor_and_card(vqa_run):
    run, _ = vqa_run
    d = run / "student"
    files = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
            "README.md", "student.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    config = json.loads((d / "config.json").read_text())
    vocab = json.loads((run / "vocab.json").read_text())["answers"]
    assert config["architectures"] == ["ViltForQuestionAnswering"]
    assert [config["id2label"][str(i)] for i in range(len(vocab))] == vocab
    assert config["label2id"] == {a: i for i, a in enumerate(vocab)}
    pre = json.loads((d / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 64} and pre["size_divisor"] == 8  # vilt-tiny: 64x64, 8-pixel patches
    assert pre["image_mean"] == [0.5, 0.5, 0.5] and pre["image_std"] == [0.5, 0.5, 0.5] and pre["resample"] == 3
    card = (d / "README.md").read_text()
    assert "64x64" in card and "ViltForQuestionAnswering.from_pretrained" in card
    assert load_student(d).labels == tuple(vocab)  # and mad still loads it


def _photo_batch(student, texts):
    ims = [Image.open(EXAMPLES / "images" / f).convert("RGB") for f in ("coffee.jpg", "chelsea.jpg")]
    px, boxes = zip(*(student.preprocess_image(im) for im in ims), strict=True)
    return ims, torch.stack(px), torch.tensor(boxes, dtype=torch.float32)


def test_snli_ve_student_loads_as_a_three_label_vilt_classifier(tmp_path):
    from transformers import ViltForQuestionAnswering, ViltProcessor

    torch.manual_seed(0)
    task = get_task("snli-ve")
    student = build_student("vilt-tiny", "snli-ve", task.num_classes)
    student.labels = task.label_names()
    student.eval().save(tmp_path / "s")
    model = ViltForQuestionAnswering.from_pretrained(tmp_path / "s").eval()
    processor = ViltProcessor.from_pretrained(tmp_path / "s")
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    ims, px, boxes = _photo_batch(student, None)
    texts = ["a cup of coffee on a plate", "a cat is sleeping"]
    enc = student.tokenize(texts)
    from PIL import ImageOps

    with torch.no_grad():
        ours = student(px, boxes, enc.input_ids, enc.attention_mask).logits
        # non-square photos: the model card's centre crop gives transformers mad's input
        fitted = [ImageOps.fit(im, (64, 64), Image.BICUBIC) for im in ims]
        theirs = model(**processor(fitted, texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=0)


def test_vcr_student_loads_as_one_score_per_pair(tmp_path):
    from transformers import ViltForQuestionAnswering

    torch.manual_seed(0)
    student = build_student("vilt-tiny", "vcr", 4).eval()
    student.labels = get_task("vcr").label_names()
    assert student.labels is None
    student.save(tmp_path / "s")
    model = ViltForQuestionAnswering.from_pretrained(tmp_path / "s").eval()
    assert model.config.id2label == {0: "score"}
    assert "one score per image-choice pair" in (tmp_path / "s" / "README.md").read_text()
    _, px, boxes = _photo_batch(student, None)
    choices = [[f"why? because {w}" for w in ("a", "b c", "d", "e f g")]] * 2
    enc = student.tokenize([t for c in choices for t in c])
    with torch.no_grad():
        ours = student(px, boxes, enc.input_ids.view(2, 4, -1), enc.attention_mask.view(2, 4, -1)).logits  # (2, 4)
        pairs = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                      pixel_values=px.repeat_interleave(4, 0)).logits  # (8, 1)
    torch.testing.assert_close(pairs.view(2, 4), ours, atol=2e-4, rtol=0)
    again = load_student(tmp_path / "s")
    assert again.labels is None and again.num_classes == 4


def test_directory_of_earlier_versions_still_loads(tmp_path):
    """The layout before the transformers one: backbone/ (save_pretrained), tokenizer/, heads.safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    student = build_student("vilt-tiny", "vqa", 5).eval()
    d = tmp_path / "old"
    student.backbone.save_pretrained(d / "backbone")
    student.tokenizer.save_pretrained(d / "tokenizer")
    save_file({k: v.contiguous() for k, v in student.head.state_dict().items()}, str(d / "heads.safetensors"))
    (d / "student.json").write_text(json.dumps({"format": 1, "family": "vilt", "name": "vilt-tiny", "task": "vqa",
                                                "num_classes": 5}))
    loaded = load_student(d)
    _, px, boxes = _photo_batch(student, None)
    enc = student.tokenize(["what is it?", "what colour?"])
    with torch.no_grad():
        assert torch.equal(student(px, boxes, enc.input_ids, enc.attention_mask).logits,
                           loaded(px, boxes, enc.input_ids, enc.attention_mask).logits)
    (d / "student.json").write_text(json.dumps({"format": 9, "family": "vilt"}))
    with pytest.raises(StudentError, match="student format 9, this version reads 1, 2"):
        load_student(d)
