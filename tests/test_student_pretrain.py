"""`mad student pretrain`: the student's image-caption stream (no held-out pair), ViLT's objectives, the cached
stage, bit-identical rebuilds, the shipped weights, and `--init pretrained|scratch` of `mad distill`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import last_json, mad_inproc

from mad_pipeline.shapes import pairs
from mad_pipeline.shapes.world import HELD_OUT_PAIRS, make_scene
from mad_pipeline.students import StudentError, build_student, resolve_init
from mad_pipeline.students import weights as weights_mod
from mad_pipeline.students.pretrain import (
    Pool,
    PretrainSettings,
    hard_share,
    itm_texts,
    mask_tokens,
    tokenize,
)
from mad_pipeline.students.pretrain_data import FIRST_WORD_ID
from mad_pipeline.students.vilt import VILT_CONFIGS, load_tokenizer

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny matrices: one thread is faster, and the bytes depend on the thread count
TINY = ["--steps", "2", "--batch-size", "4", "--pool-size", "8", "--warmup", "1", "--eval-size", "4",
        "--probe-steps", "1", "--probe-train", "4", "--cell-steps", "2"]


def _phrases(text: str) -> set[str]:
    return {p.strip() for part in text.split(", ") for p in part.split(" and ")}


def test_student_stream_has_no_held_out_pair_and_negatives_are_false():
    held = set(HELD_OUT_PAIRS)
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(800):
        scene = pairs.pool_scene(0, i)
        assert not scene.pairs() & held, (i, scene.pairs())
        cap, neg = pairs.caption(scene, rng), pairs.hard_negative(scene, rng)
        assert not pairs.caption_pairs(cap) & held and not pairs.caption_pairs(neg) & held, (cap, neg)
        assert pairs.caption_pairs(cap) == scene.pairs()
        assert _phrases(neg) != _phrases(cap)  # one attribute of one part changed: false for the scene
        seen |= scene.pairs()
    assert len(seen) == 20  # every allowed pair is there
    # the teacher's stream is another one, unchanged: it still has the held-out pairs
    assert any(make_scene(0, "pretrain", i).pairs() & held for i in range(50))
    assert make_scene(0, "pretrain", 3) != pairs.pool_scene(0, 3)


def test_hard_negatives_come_in_as_a_curriculum():
    s = PretrainSettings(steps=1000, hard_fraction=0.5, hard_ramp=0.4)
    assert hard_share(999, s, None) == 0.0  # the gate never opened: easy negatives only
    assert hard_share(99, s, 100) == 0.0 and hard_share(300, s, 100) == 0.25
    assert hard_share(500, s, 100) == hard_share(999, s, 100) == 0.5
    assert hard_share(7, PretrainSettings(hard_ramp=0.0, hard_fraction=0.5), 7) == 0.5
    scenes = [pairs.pool_scene(0, i) for i in range(400)]
    pool = Pool(scenes, torch.zeros(len(scenes), 1))
    idx = np.arange(len(scenes))
    own = [_phrases(pairs.caption(sc, np.random.default_rng(0))) for sc in scenes]

    def kinds(hard):
        texts, labels = itm_texts(pool, idx, s, np.random.default_rng(3), hard)
        neg = [(i, t) for i, (t, y) in enumerate(zip(texts, labels, strict=True)) if y == 0]
        # a hard negative shares all but one part with the scene's own caption; another scene's caption rarely does
        return len(neg), sum(len(_phrases(t) & own[i]) >= len(own[i]) - 1 for i, t in neg)

    n, hard = kinds(0.0)
    assert 150 < n < 250 and hard < 0.1 * n
    n, hard = kinds(1.0)
    assert hard == n


def test_schedule_mlm_alone_then_itm_then_hard_negatives_once_easy_itm_is_learned(monkeypatch):
    from mad_pipeline.students import pretrain as P

    monkeypatch.setattr(P, "GATE_WINDOW", 2)
    torch.set_num_threads(1)
    pool = P.make_pool(0, 0, 8)
    s = PretrainSettings(steps=6, batch_size=4, warmup=1, itm_start=0.5, hard_gate=0.0, hard_ramp=0.0, cell_steps=0)
    loop = P.Loop(s, pool)
    infos = [loop.step(i) for i in range(s.steps)]
    assert loop.itm_from == 3
    # MLM alone for the first half: ITM reported at chance, not trained
    assert all(i["itm"] == pytest.approx(np.log(2)) and i["itm_acc"] == 0.5 for i in infos[:3])
    assert all(i["loss"] == i["mlm"] for i in infos[:3])
    # ITM from step 3; the gate (any accuracy >= 0 over 2 ITM steps) opens after step 4: hard negatives from step 5
    assert all(i["loss"] > i["mlm"] for i in infos[3:])
    assert loop.gate == 5 and [i["hard"] for i in infos] == [0, 0, 0, 0, 0, 0.5]
    # a gate never reached keeps the negatives easy
    loop = P.Loop(replace(s, hard_gate=1.0), pool)
    infos = [loop.step(i) for i in range(s.steps)]
    assert max(i["itm_acc"] for i in infos) < 1.0 and loop.gate is None and {i["hard"] for i in infos} == {0}


def test_mlm_masking_is_berts():
    tok = load_tokenizer(None)
    caps = [pairs.caption(pairs.pool_scene(0, i), np.random.default_rng(i)) for i in range(120)]
    ids, _, maskable = tokenize(tok, caps, 40)
    masked, chosen = mask_tokens(ids, maskable, 0.15, tok, np.random.default_rng(1))
    assert not (chosen & ~maskable).any()  # never [CLS], [SEP] or padding
    assert (chosen.sum(1) >= 1).all()
    share = chosen.sum() / maskable.sum()
    assert 0.13 < float(share) < 0.18
    m = masked[chosen]
    as_mask = float((m == tok.mask_token_id).float().mean())
    kept = float((m == ids[chosen]).float().mean())
    assert 0.75 < as_mask < 0.85 and 0.05 < kept < 0.16
    assert int(m[m != tok.mask_token_id].min()) >= FIRST_WORD_ID or kept > 0
    assert (masked[~chosen] == ids[~chosen]).all()


def test_pretrain_cli_cached_and_rebuilt_bit_for_bit(tmp_path):
    out_a = tmp_path / "a"
    first = last_json(mad_inproc("student", "pretrain", *TINY, "--cache", str(tmp_path / "c1"), "--out", str(out_a),
                                 "--json", env=ONE_THREAD))
    assert not first["cached"] and set(first["figures"]) == {"pretrained", "scratch"}
    for who in ("pretrained", "scratch"):
        assert {"itm_accuracy", "mlm_accuracy", "mlm_content_accuracy", "probe_colour", "probe_shape",
                "probe_count"} <= set(first["figures"][who])
    again = last_json(mad_inproc("student", "pretrain", *TINY, "--cache", str(tmp_path / "c1"), "--json",
                                 env=ONE_THREAD))
    assert again["cached"] and again["key"] == first["key"] and again["figures"] == first["figures"]
    # the same command in another cache rebuilds the same bytes
    rebuilt = last_json(mad_inproc("student", "pretrain", *TINY, "--cache", str(tmp_path / "c2"), "--json",
                                   env=ONE_THREAD))
    assert not rebuilt["cached"] and rebuilt["key"] == first["key"]
    a = (out_a / "model.safetensors").read_bytes()
    assert a == (Path(rebuilt["path"]) / "model.safetensors").read_bytes()
    meta = json.loads((out_a / "training.json").read_text())
    import hashlib

    assert meta["sha256"] == hashlib.sha256(a).hexdigest() and meta["settings"]["steps"] == 2
    # another setting is another key
    from mad_pipeline.stages.student_pretrain import StudentPretrainConfig, stage_key

    base = StudentPretrainConfig(steps=2, batch_size=4, pool_size=8, warmup=1, eval_size=4, probe_steps=1,
                                 probe_train=4, cell_steps=2)
    assert stage_key(base) == first["key"]
    assert stage_key(StudentPretrainConfig(**{**vars(base), "seed": 1})) != first["key"]
    assert stage_key(StudentPretrainConfig(**{**vars(base), "out": tmp_path, "progress": False})) == first["key"]

    # the weights are a backbone `--pretrained DIR` loads: the student's backbone = the saved tensors
    from safetensors.torch import load_file

    saved = load_file(str(out_a / "model.safetensors"))
    student = build_student("vilt-tiny", "vqa", 5, resolve_init("vilt-tiny", "scratch", str(out_a)))
    got = student.backbone.state_dict()
    w = "embeddings.text_embeddings.word_embeddings.weight"
    assert got[w].dtype == torch.float32 and torch.equal(got[w], saved["vilt." + w].float())
    # the pooler, which only ITM trains, is saved with the ITM head: the student draws its own
    assert "vilt.pooler.dense.weight" not in saved and "itm_pooler.dense.weight" in saved
    assert not torch.equal(got["pooler.dense.weight"], saved["itm_pooler.dense.weight"].float())


def test_patch_position_embedding_init_and_its_key(monkeypatch):
    """transformers starts ViLT's patch position embedding at zeros; --pos-init-std draws it instead, enters the key
    only when set (older students keep their keys), and the from-scratch comparison starts the same way. A key
    includes the torch and transformers versions (another version may train other weights), so the keys below are
    those of the versions the shipped student records, whatever this environment has installed."""
    from mad_pipeline.stages import student_pretrain
    from mad_pipeline.stages.student_pretrain import StudentPretrainConfig, stage_key, weights_key

    record = json.loads((Path(weights_mod.PRESET_WEIGHTS["vilt-tiny"]) / "training.json").read_text())
    recorded = {"torch": record["torch"], "transformers": record["transformers"]}
    installed, versions = stage_key(StudentPretrainConfig()), student_pretrain.key_versions()
    monkeypatch.setattr(student_pretrain, "key_versions", lambda: recorded)
    assert (stage_key(StudentPretrainConfig()) == installed) == (versions == recorded)

    from mad_pipeline.students.pretrain import build_model, settings_dict

    zero = build_model("vilt-tiny", 0).vilt.embeddings.position_embeddings.detach()
    drawn = build_model("vilt-tiny", 0, 0.5).vilt.embeddings.position_embeddings.detach()
    assert float(zero.abs().max()) == 0.0 and 0.45 < float(drawn.std()) < 0.55
    assert "pos_init_std" not in settings_dict(PretrainSettings(pos_init_std=0.0))
    assert settings_dict(PretrainSettings(pos_init_std=0.5))["pos_init_std"] == 0.5
    # the defaults: the shipped student's record (docs/shapes.md), an image phase and the pooler kept by ITM
    assert stage_key(StudentPretrainConfig()).startswith("c90a88decf83")
    # the student shipped before (no image phase, zero position init): the key it always had
    base = StudentPretrainConfig(pos_init_std=0.0, cell_steps=0, itm_pooler=False)
    assert stage_key(base).startswith("fdfd217cbf31")
    assert stage_key(base) == stage_key(StudentPretrainConfig(pos_init_std=0.0, cell_steps=0, place_mask=0.0,
                                                              itm_pooler=False))
    # the same training as the shipped one, its pooler saved in the backbone (the figures of docs/shapes.md)
    assert stage_key(StudentPretrainConfig(itm_pooler=False)).startswith("fdd184367e7a")
    other = StudentPretrainConfig(pos_init_std=0.5, cell_steps=0, itm_pooler=False)
    assert stage_key(other) != stage_key(base) and weights_key(other) != weights_key(base)
    proc = mad_inproc("student", "pretrain", "--pos-init-std", "-1", check=False)
    assert proc.returncode == 2 and "--pos-init-std must be at least 0" in proc.stderr


def test_whole_place_masking():
    """--place-mask: in that share of the captions one whole place ("top left") is masked besides BERT's tokens."""
    from mad_pipeline.students.pretrain_data import PLACE_WORDS, mask_place

    tok = load_tokenizer(None)
    caps = [pairs.caption(pairs.pool_scene(0, i), np.random.default_rng(i)) for i in range(60)]
    ids, _, maskable = tokenize(tok, caps, 40)
    masked, chosen = mask_tokens(ids, maskable, 0.15, tok, np.random.default_rng(1))
    before = chosen.clone()
    mask_place(ids, masked, chosen, tok, np.random.default_rng(2), 1.0)
    place = torch.isin(ids, torch.tensor(tok.convert_tokens_to_ids(list(PLACE_WORDS))))
    added = chosen & ~before
    assert added.any(1).float().mean() > 0.5 and not (added & ~place).any()
    assert (masked[added] == tok.mask_token_id).all()
    for r in range(len(caps)):  # a whole place: no place word next to an added one is left unmasked
        for i in added[r].nonzero().flatten().tolist():
            for j in (i - 1, i + 1):
                assert not place[r, j] or chosen[r, j]
    none = chosen.clone()
    mask_place(ids, masked, none, tok, np.random.default_rng(2), 0.0)
    assert torch.equal(none, chosen)


def test_image_phase_teaches_the_cells_and_enters_the_key(tmp_path):
    """--cell-steps: a probe on the pooled output learns every cell's contents before MLM (its loss falls), is not
    saved, fades out over the first quarter of the schedule; the setting enters the key only when set."""
    from mad_pipeline.stages.student_pretrain import StudentPretrainConfig, stage_key

    from mad_pipeline.students.pretrain import Loop, make_pool, settings_dict

    s = PretrainSettings(steps=8, batch_size=16, pool_size=32, warmup=2, cell_steps=30, lr=2e-3)
    loop = Loop(s, make_pool(0, 0, 32))
    first = [loop.cell_step(i)["cell"] for i in range(3)]
    for i in range(3, 30):
        last = loop.cell_step(i)["cell"]
    assert last < 0.8 * np.mean(first)
    infos = [loop.step(i) for i in range(4)]
    assert "cell" in infos[0] and "cell" in infos[1] and "cell" not in infos[2]  # fades over steps // 4 = 2
    assert not any(k.startswith("probe") for k in loop.model.state_dict())
    assert "cell_steps" not in settings_dict(PretrainSettings(cell_steps=0)) and settings_dict(s)["cell_steps"] == 30
    assert "place_mask" not in settings_dict(PretrainSettings())
    assert stage_key(StudentPretrainConfig()) == stage_key(StudentPretrainConfig(place_mask=0.0))
    assert stage_key(StudentPretrainConfig(cell_steps=5)) != stage_key(StudentPretrainConfig())
    res = last_json(mad_inproc("student", "pretrain", *TINY, "--cell-steps", "2", "--place-mask", "0.5",
                               "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "w"), "--json", env=ONE_THREAD))
    meta = json.loads((tmp_path / "w" / "training.json").read_text())
    assert meta["settings"]["cell_steps"] == 2 and meta["settings"]["place_mask"] == 0.5
    assert len(meta["cell_curve"]) == 2 and res["figures"]["pretrained"]["mlm_place"] >= 0


def test_init_resolution_and_errors(tmp_path, monkeypatch):
    assert resolve_init("vilt-tiny", "scratch") is None
    assert resolve_init("vilt-b32", "pretrained") == "dandelin/vilt-b32-mlm"
    assert resolve_init("vilt-b32", "pretrained", "/x") == "/x"  # --pretrained wins
    with pytest.raises(StudentError, match="--init 'bogus'"):
        resolve_init("vilt-tiny", "bogus")
    monkeypatch.setitem(weights_mod.PRESET_WEIGHTS, "vilt-tiny", tmp_path / "missing")
    with pytest.raises(StudentError, match="mad student pretrain"):
        resolve_init("vilt-tiny", "pretrained")
    proc = mad_inproc("distill", "--task", "vqa", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"),
                      "--init", "bogus", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --init 'bogus': expected one of pretrained, scratch"]
    proc = mad_inproc("student", "pretrain", "--negative-fraction", "1.5", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --negative-fraction must be at most 1 (a share), got 1.5"


@pytest.mark.parametrize("name", ["vilt-tiny", "vilt-mini-l3"])
def test_shipped_student_matches_its_record_and_loads(name):
    import hashlib

    d = Path(weights_mod.PRESET_WEIGHTS[name])
    meta = json.loads((d / "training.json").read_text())
    assert meta["settings"]["student"] == name
    assert hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() == meta["sha256"]
    cfg = json.loads((d / "config.json").read_text())
    assert {k: cfg[k] for k in VILT_CONFIGS[name]} == VILT_CONFIGS[name]
    student = build_student(name, "vqa", 7, resolve_init(name, "pretrained"))
    assert student.hidden_size == 128 and next(student.parameters()).dtype == torch.float32
    assert student.backbone.config.num_hidden_layers == VILT_CONFIGS[name]["num_hidden_layers"]


def test_mad_run_yaml_init_and_the_keys_runs_always_had(tmp_path, monkeypatch):
    from mad_pipeline.stages.distill import DistillConfig, fingerprint
    from mad_pipeline.stages.pipeline import load_config

    from mad_pipeline.errors import InputError

    f = tmp_path / "x.yaml"
    f.write_text("task: vqa\ndata: {root: data}\ninit: pretrained\n")
    assert load_config(f).values["init"] == "pretrained"
    assert load_config(f, ["init=scratch"]).values["init"] == "scratch"
    with pytest.raises(InputError, match=r"init: .bogus. is not one of pretrained, scratch"):
        load_config(f, ["init=bogus"])
    # scratch: the fingerprint a run always had (no `init` in it); pretrained: another run
    scratch = DistillConfig(task="vqa", data_root=tmp_path, out=tmp_path / "run")
    assert scratch.init == "scratch" and "init" not in fingerprint(scratch)
    assert fingerprint(DistillConfig(task="vqa", data_root=tmp_path, out=tmp_path / "run", init="pretrained")) != \
        fingerprint(scratch)


def test_fresh_pooler_redraws_only_the_pooler_and_enters_the_key(tmp_path):
    """`--fresh-pooler` (`fresh_pooler:` in a `mad run` YAML): the pretrained backbone with its pooler drawn as
    transformers initialises it (seeded); every other weight as loaded; in the run's key only when set."""
    from mad_pipeline.stages.distill import DistillConfig, fingerprint
    from mad_pipeline.stages.pipeline import load_config

    torch.manual_seed(0)
    kept = build_student("vilt-tiny", "vqa", 5, resolve_init("vilt-tiny", "pretrained"))
    torch.manual_seed(0)
    fresh = build_student("vilt-tiny", "vqa", 5, resolve_init("vilt-tiny", "pretrained"))
    fresh.reset_pooler()
    a, b = kept.state_dict(), fresh.state_dict()
    pooler = {k for k in a if ".pooler." in k}
    assert pooler == {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a if k not in pooler)
    w = b["backbone.pooler.dense.weight"]
    assert not torch.equal(w, a["backbone.pooler.dense.weight"]) and not b["backbone.pooler.dense.bias"].any()
    assert abs(w.std().item() - fresh.backbone.config.initializer_range) < 0.002
    torch.manual_seed(1)
    again = build_student("vilt-tiny", "vqa", 5, resolve_init("vilt-tiny", "pretrained"))
    again.reset_pooler()
    assert not torch.equal(again.state_dict()["backbone.pooler.dense.weight"], w)  # drawn from the caller's seed
    run = dict(task="vqa", data_root=tmp_path, out=tmp_path / "run", init="pretrained")
    assert "fresh_pooler" not in fingerprint(DistillConfig(**run))  # runs keep the keys they always had
    assert fingerprint(DistillConfig(**run, fresh_pooler=True)) != fingerprint(DistillConfig(**run))
    f = tmp_path / "x.yaml"
    f.write_text("task: vqa\ndata: {root: data}\ninit: pretrained\n")
    assert load_config(f).values["fresh_pooler"] is False
    assert load_config(f, ["fresh_pooler=true"]).values["fresh_pooler"] is True


def test_a_drawn_pooler_counts_as_created_for_head_lr_mult(tmp_path):
    """`train.head_lr_mult` scales what a run creates: the task head, and the pooler when the run draws it (the
    shipped student has none in its backbone, or `--fresh-pooler`), not a pooler loaded with the backbone. Such runs
    have keys of their own (earlier ones scaled the head only)."""
    from mad_pipeline.stages.distill import DistillConfig, fingerprint

    from mad_pipeline.training.config import TrainConfig, created_here

    def created(student) -> set[str]:
        ids = created_here(student, torch.nn.Linear(1, 1))
        return {n for n, p in student.named_parameters() if id(p) in ids}

    head = {n for n, _ in build_student("vilt-tiny", "vqa", 5).named_parameters() if n.startswith("head.")}
    shipped = build_student("vilt-tiny", "vqa", 5, resolve_init("vilt-tiny", "pretrained"))
    assert shipped.pooler_drawn
    assert created(shipped) == head | {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"}
    assert created(build_student("vilt-tiny", "vqa", 5)) == head  # from scratch: nothing is loaded, the head is ours
    shipped.backbone.save_pretrained(tmp_path / "with-pooler")  # a checkpoint that has a pooler keeps it
    loaded = build_student("vilt-tiny", "vqa", 5, str(tmp_path / "with-pooler"))
    assert not loaded.pooler_drawn and created(loaded) == head
    loaded.reset_pooler()
    assert created(loaded) == created(shipped)
    run = dict(task="vqa", data_root=tmp_path, out=tmp_path / "run")
    for init in ("pretrained", "scratch"):
        plain, scaled = (fingerprint(DistillConfig(**run, init=init, train=TrainConfig(head_lr_mult=m)))["train"]
                         for m in (1.0, 10.0))
        assert "head_lr_pooler" not in plain
        assert scaled.get("head_lr_pooler") is (True if init == "pretrained" else None)


def test_itm_pooler_is_saved_with_the_itm_head_and_students_draw_their_own(tmp_path):
    """`--itm-pooler` (the default): the pooler (trained by ITM alone) is stored as `itm_pooler.*`, so a student that
    loads the backbone starts its own pooler (seeded), while the pretraining model reloads whole; `--no-itm-pooler`
    keeps it in the backbone; in the keys only when set."""
    from mad_pipeline.stages.student_pretrain import StudentPretrainConfig, weights_key
    from safetensors.torch import load_file

    from mad_pipeline.students.pretrain import build_model, load, save, settings_dict

    model = build_model("vilt-tiny", 3)
    with torch.no_grad():
        model.vilt.pooler.dense.bias.fill_(0.5)  # not what a fresh pooler starts from
    save(model, tmp_path / "a", {}, itm_pooler=True)
    save(model, tmp_path / "b", {})
    keys = set(load_file(str(tmp_path / "a" / "model.safetensors")))
    assert {"itm_pooler.dense.weight", "itm_pooler.dense.bias"} <= keys and not any("vilt.pooler" in k for k in keys)
    whole = {k: v for k, v in load(tmp_path / "b").state_dict().items()}
    assert all(torch.equal(v, whole[k]) for k, v in load(tmp_path / "a").state_dict().items())  # reloads whole
    torch.manual_seed(0)
    student = build_student("vilt-tiny", "vqa", 5, str(tmp_path / "a"))
    torch.manual_seed(0)
    kept = build_student("vilt-tiny", "vqa", 5, str(tmp_path / "b"))
    assert not student.backbone.pooler.dense.bias.any() and bool((kept.backbone.pooler.dense.bias == 0.5).all())
    a, b = student.backbone.state_dict(), kept.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("pooler."))
    old = StudentPretrainConfig(pos_init_std=0.0, cell_steps=0, itm_pooler=False)
    assert "itm_pooler" not in settings_dict(old.settings())  # unset: the key students saved whole always had
    assert weights_key(StudentPretrainConfig(itm_pooler=True)) != weights_key(StudentPretrainConfig(itm_pooler=False))
    assert StudentPretrainConfig().itm_pooler  # the default
    for flag, in_backbone in (("--itm-pooler", False), ("--no-itm-pooler", True)):  # the command's own options
        res = last_json(mad_inproc("student", "pretrain", *TINY, flag, "--cache", str(tmp_path / "c"), "--json",
                                   env=ONE_THREAD))
        saved = set(load_file(str(Path(res["path"]) / "model.safetensors")))
        assert ("vilt.pooler.dense.weight" in saved) is in_backbone
        meta = json.loads((Path(res["path"]) / "training.json").read_text())
        assert meta["settings"].get("itm_pooler", False) is not in_backbone


def test_pretrain_another_shapes_world_student_and_refuse_one_that_is_not(tmp_path):
    """`--student` pretrains any preset with the shapes world's 64-pixel images (vilt-mini: 2 layers, 16-pixel
    patches) under its own key, and a student that --pretrained DIR loads at that size; another preset is one line."""
    out = tmp_path / "mini"
    mini = last_json(mad_inproc("student", "pretrain", *TINY, "--student", "vilt-mini", "--cache", str(tmp_path / "c"),
                                "--out", str(out), "--json", env=ONE_THREAD))
    tiny = last_json(mad_inproc("student", "pretrain", *TINY, "--cache", str(tmp_path / "c"), "--json",
                                env=ONE_THREAD))
    assert mini["key"] != tiny["key"] and set(mini["figures"]) == {"pretrained", "scratch"}
    student = build_student("vilt-mini", "vqa", 5, resolve_init("vilt-mini", "scratch", str(out)))
    assert student.grid == (4, 4) and len(student.backbone.encoder.layer) == 2
    r = mad_inproc("student", "pretrain", *TINY, "--student", "vilt-b32", "--cache", str(tmp_path / "c"), check=False)
    assert r.returncode != 0 and "--student 'vilt-b32'" in r.stderr and "vilt-tiny, vilt-mini" in r.stderr
    assert "Traceback" not in r.stderr
