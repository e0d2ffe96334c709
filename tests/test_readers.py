"""Readers for the official VQA v2, SNLI-VE and VCR files: parse fixtures written exactly in the official formats,
reject malformed input with an error naming the file and the record."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from mad_pipeline.data import Sample, load_dataset
from mad_pipeline.data.snli_ve import read_snli_ve
from mad_pipeline.data.vcr import read_vcr, render_tokens
from mad_pipeline.data.vqa import read_vqa
from mad_pipeline.errors import InputError

FIX = Path(__file__).parent / "fixtures"
VQA_Q = "v2_OpenEnded_mscoco_val2014_questions.json"
VQA_A = "v2_mscoco_val2014_annotations.json"


def _copy(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(FIX / name, root)
    return root


# ------------------------------------------------------------------------------------------------------- VQA v2


def test_vqa_reads_official_files():
    ds = read_vqa(FIX / "vqa", "val")
    assert ds.name == "vqa" and ds.split == "val"
    assert [p.name for p in ds.sources] == [VQA_Q, VQA_A]
    assert [s.id for s in ds.samples] == ["42000", "42001", "1337000"]
    s = ds.samples[1]
    assert s.image == "val2014/COCO_val2014_000000000042.jpg"
    assert s.texts == ("How many dogs are there?",)
    assert s.meta["question_id"] == 42001 and s.meta["image_id"] == 42
    assert s.meta["answers"] == ["2"] * 9 + ["3"]
    assert s.meta["answer_type"] == "number" and s.meta["question_type"] == "how many"
    assert s.meta["multiple_choice_answer"] == "2"
    assert s.meta["answer_records"][0] == {"answer": "2", "answer_confidence": "yes", "answer_id": 1}
    assert ds.image_paths() == ["val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000001337.jpg"]
    # through the registry, with the official subtype name as split
    ds2 = load_dataset("vqa", FIX / "vqa", split="val2014")
    assert [s.id for s in ds2.samples] == [s.id for s in ds.samples]


def test_vqa_api_layout_and_test_split(tmp_path):
    root = tmp_path / "VQA"
    (root / "Questions").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Images/mscoco/val2014").mkdir(parents=True)
    shutil.copy(FIX / "vqa" / VQA_Q, root / "Questions")
    shutil.copy(FIX / "vqa" / VQA_A, root / "Annotations")
    ds = read_vqa(root, "val")
    assert ds.samples[0].image == "Images/mscoco/val2014/COCO_val2014_000000000042.jpg"
    # test-dev: questions only, images in test2015/
    q = json.loads((FIX / "vqa" / VQA_Q).read_text())
    q["data_subtype"] = "test-dev2015"
    (root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(q))
    ds = read_vqa(root, "test-dev")
    assert ds.samples[0].image == "test2015/COCO_test2015_000000000042.jpg"
    assert "answers" not in ds.samples[0].meta and len(ds.sources) == 1
    with pytest.raises(InputError, match="dev2014_questions.json: VQA v2 questions file not found"):
        read_vqa(root, "dev")
    with pytest.raises(InputError, match="v2_mscoco_train2014_annotations.json"):
        (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(q))
        read_vqa(root, "train")


def _mutate_q(d):
    del d["questions"][1]["question"]


def _qid_str(d):
    d["questions"][0]["question_id"] = "42000"


def _drop_ann(d):
    d["annotations"] = [a for a in d["annotations"] if a["question_id"] != 1337000]


def _answers_not_list(d):
    d["annotations"][1]["answers"] = "2"


def _dup_question(d):
    d["questions"][2]["question_id"] = 42000


def _image_mismatch(d):
    d["annotations"][2]["image_id"] = 7


def _extra_ann(d):
    d["annotations"].append(dict(d["annotations"][0], question_id=99))


def _answer_not_str(d):
    d["annotations"][0]["answers"][3]["answer"] = 3


def _answer_not_object(d):
    d["annotations"][1]["answers"][2] = "2"


def _answer_missing(d):
    del d["annotations"][1]["answers"][5]["answer"]


def _answer_id_bool(d):
    d["annotations"][2]["answers"][0]["answer_id"] = True


def _answer_confidence_int(d):
    d["annotations"][2]["answers"][9]["answer_confidence"] = 1


def _answer_lone_surrogate(d):
    d["annotations"][0]["answers"][7]["answer"] = "ca\ud800t"


@pytest.mark.parametrize("which, mutate, expect", [
    ("q", _mutate_q, [VQA_Q, "question_id=42001", "missing field 'question'"]),
    ("q", _qid_str, [VQA_Q, "questions[0]", "'question_id' must be an integer"]),
    ("q", _dup_question, [VQA_Q, "question_id=42000", "duplicate question_id"]),
    ("a", _drop_ann, [VQA_Q, "question_id=1337000", "no annotation", VQA_A]),
    ("a", _answers_not_list, [VQA_A, "question_id=42001", "'answers'"]),
    ("a", _image_mismatch, [VQA_Q, "question_id=1337000", "image_id"]),
    ("a", _extra_ann, [VQA_A, "question_id=99", "no question"]),
    ("a", _answer_not_str, [VQA_A, "question_id=42000", "answers[3].answer"]),
    ("a", _answer_not_object, [VQA_A, "question_id=42001", "answers[2] must be a JSON object"]),
    ("a", _answer_missing, [VQA_A, "question_id=42001", "answers[5]: missing field 'answer'"]),
    ("a", _answer_id_bool, [VQA_A, "question_id=1337000", "'answers[0].answer_id' must be an integer"]),
    ("a", _answer_confidence_int, [VQA_A, "question_id=1337000", "'answers[9].answer_confidence' must be a string"]),
    ("a", _answer_lone_surrogate, [VQA_A, "question_id=42000", "'answers[7].answer' is not valid Unicode"]),
])
def test_vqa_rejects_malformed_records(tmp_path, which, mutate, expect):
    root = _copy("vqa", tmp_path)
    path = root / (VQA_Q if which == "q" else VQA_A)
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        read_vqa(root, "val")
    msg = str(e.value)
    assert "\n" not in msg
    for part in expect:
        assert part in msg


def test_a_split_read_again_in_one_process_is_parsed_once_until_its_files_change(tmp_path, monkeypatch):
    """Stages of one process read the same split again (planning, training, evaluation, the report): it is parsed
    once, each caller gets its own sample list, and an edit of one of its files is read."""
    import mad_pipeline.data.vqa as vqa_module

    root = _copy("vqa", tmp_path)
    for path in (root, *root.iterdir()):  # files as a dataset's are: not written a moment ago
        os.utime(path, (time.time() - 3600,) * 2)
    parsed = []
    parse = vqa_module.parse_vqa
    monkeypatch.setattr(vqa_module, "parse_vqa", lambda *a, **k: parsed.append(a) or parse(*a, **k))
    first = load_dataset("vqa", root, split="val")
    first.samples.pop()
    again = load_dataset("vqa", str(root), split="val2014")  # the same split by another name is read again
    same = load_dataset("vqa", root / ".", split="val")
    assert len(parsed) == 2
    assert [s.id for s in same.samples] == ["42000", "42001", "1337000"] and same.sources == again.sources
    path = root / VQA_A
    doc = json.loads(path.read_text())
    doc["annotations"][0]["multiple_choice_answer"] = "twenty"
    path.write_text(json.dumps(doc))
    edited = load_dataset("vqa", root, split="val")
    assert len(parsed) == 3 and edited.samples[0].meta["multiple_choice_answer"] == "twenty"
    load_dataset("vqa", root, split="val")  # written a moment ago: read again, not kept
    assert len(parsed) == 4


def test_vqa_rejects_bad_json_and_structure(tmp_path):
    root = _copy("vqa", tmp_path)
    q = root / VQA_Q
    text = q.read_text()
    q.write_text(text[:-10])  # truncated
    with pytest.raises(InputError, match=rf"{VQA_Q}:1: malformed JSON"):
        read_vqa(root, "val")
    q.write_bytes(b'{"questions": ["\xff"]}')
    with pytest.raises(InputError, match=rf"{VQA_Q}:1: not valid UTF-8"):
        read_vqa(root, "val")
    q.write_text(json.dumps({"questionz": []}))
    with pytest.raises(InputError, match=rf"{VQA_Q}: expected a JSON object with a 'questions' list"):
        read_vqa(root, "val")
    q.unlink()
    with pytest.raises(InputError, match=VQA_Q):
        read_vqa(root, "val")


def test_vqa_skip_records_bad_question(tmp_path):
    root = _copy("vqa", tmp_path)
    path = root / VQA_Q
    doc = json.loads(path.read_text())
    doc["questions"][1]["question"] = None
    path.write_text(json.dumps(doc))
    ds = read_vqa(root, "val", on_error="skip")
    assert [s.id for s in ds.samples] == ["42000", "1337000"]
    assert len(ds.skipped) == 1
    sk = ds.skipped[0]
    assert sk.source.endswith(f"{VQA_Q}:question_id=42001") and sk.sample_id == "42001"
    assert "'question' must be a string" in sk.reason


# ------------------------------------------------------------------------------------------------------- SNLI-VE


def test_snli_ve_reads_official_file():
    ds = read_snli_ve(FIX / "snli_ve", "dev")
    assert ds.name == "snli-ve" and ds.sources[0].name == "snli_ve_dev.jsonl"
    assert [s.meta["gold_label"] for s in ds.samples] == ["entailment", "neutral", "contradiction"]
    s = ds.samples[1]
    assert s.id == "1000092795.jpg#2r1n" == s.meta["pairID"]
    assert s.texts == ("The dogs are racing for a prize.",)  # the hypothesis, never the premise caption
    assert s.image == "Flickr30K/flickr30k_images/1000092795.jpg"
    assert s.meta["Flickr30K_ID"] == "1000092795"
    assert len(load_dataset("snli-ve", FIX / "snli_ve", split="dev").samples) == 3


def test_snli_ve_image_layouts_and_file_location(tmp_path):
    root = tmp_path / "ve"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(FIX / "snli_ve" / "snli_ve_dev.jsonl", root / "annotations")
    (root / "flickr30k_images").mkdir()
    assert read_snli_ve(root, "dev").samples[0].image == "flickr30k_images/1000092795.jpg"
    (root / "Flickr30K" / "flickr30k_images").mkdir(parents=True)
    assert read_snli_ve(root, "dev").samples[0].image == "Flickr30K/flickr30k_images/1000092795.jpg"
    with pytest.raises(InputError, match="SNLI-VE splits are train, dev, test"):
        read_snli_ve(root, "val")
    with pytest.raises(InputError, match="snli_ve_train.jsonl"):
        read_snli_ve(root, "train")


@pytest.mark.parametrize("line2, expect", [
    ('{"pairID": "x", "sentence2": "A dog.", "gold_label": "neutral"', "malformed JSON"),
    (None, "missing field 'sentence2'"),
    ("gold:-", "gold_label '-' is not one of"),
    ("fid:../../etc/passwd", "must be an image id, not a path"),
    ("dup", "duplicate pairID"),
    (b"\xff\xfe", "not valid UTF-8"),
])
def test_snli_ve_rejects_malformed_lines(tmp_path, line2, expect):
    root = _copy("snli_ve", tmp_path)
    path = root / "snli_ve_dev.jsonl"
    lines = path.read_bytes().splitlines()
    rec = json.loads(lines[1])
    if line2 is None:
        del rec["sentence2"]
        new = json.dumps(rec).encode()
    elif isinstance(line2, bytes):
        new = line2
    elif line2.startswith("gold:"):
        new = json.dumps(dict(rec, gold_label=line2[5:])).encode()
    elif line2.startswith("fid:"):
        new = json.dumps(dict(rec, Flickr30K_ID=line2[4:])).encode()
    elif line2 == "dup":
        new = lines[0]
    else:
        new = line2.encode()
    lines[1] = new
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError) as e:
        read_snli_ve(root, "dev")
    assert str(e.value).startswith(f"{path}:2: ") and expect in str(e.value)
    ds = read_snli_ve(root, "dev", on_error="skip")
    assert len(ds.samples) == 2 and ds.skipped[0].source == f"{path}:2"


# ------------------------------------------------------------------------------------------------------- VCR


def test_vcr_renders_tokens():
    objs = ["person", "person", "dog", "chair"]
    assert render_tokens(["Why", "is", [1], "smiling", "?"], objs) == "Why is person1 smiling?"
    assert render_tokens([[0, 1], "are", "happy", "."], objs) == "person0 and person1 are happy."
    assert render_tokens([[0, 2, 3], "do", "n't", "move", ","], objs) == "person0, dog2 and chair3 don't move,"
    assert render_tokens(["It", "'s", [2], "'s", "toy", "."], objs) == "It's dog2's toy."
    with pytest.raises(ValueError, match="object index 4 out of range"):
        render_tokens(["Who", "is", [4], "?"], objs)


def test_vcr_reads_official_files():
    ds = read_vcr(FIX / "vcr", "val")
    assert ds.name == "vcr" and ds.sources[0].name == "val.jsonl"
    assert [s.id for s in ds.samples] == ["val-0", "val-1"]
    s = ds.samples[0]
    assert s.image == "vcr1images/lsmdc_0001_American_Beauty/0001_American_Beauty_00.00.17.468-00.00.20.711@0.jpg"
    assert s.meta["metadata_fn"].endswith("@0.json") and s.meta["metadata_fn"].startswith("vcr1images/")
    assert s.meta["question"] == "What is person0 about to do?"
    assert s.meta["answer_choices"][1] == "She is going to sit down."
    assert s.meta["answer_choices"][3] == "She isn't going to move."
    assert s.meta["rationale_choices"][1] == "person0 is standing next to chair3 and bending her knees."
    assert (s.meta["answer_label"], s.meta["rationale_label"]) == (1, 1)
    assert ds.samples[1].meta["rationale_label"] == 2
    assert len(s.texts) == 9 and s.texts[0] == s.meta["question"]
    assert list(s.texts[1:5]) == s.meta["answer_choices"] and list(s.texts[5:]) == s.meta["rationale_choices"]
    test = load_dataset("vcr", FIX / "vcr", split="test")
    assert test.samples[0].meta["answer_label"] is None and test.samples[0].meta["rationale_label"] is None


@pytest.mark.parametrize("mutate, expect", [
    (lambda r: r["question"].__setitem__(2, [9]), "question[2]: object index 9 out of range"),
    (lambda r: r["answer_choices"].pop(), "'answer_choices' must be a list of 4"),
    (lambda r: r.pop("answer_label"), "missing field 'answer_label'"),
    (lambda r: r.__setitem__("rationale_label", 4), "'rationale_label' must be 0-3"),
    (lambda r: r.__setitem__("img_fn", "../../../x.jpg"), "escapes the data root"),
    (lambda r: r["rationale_choices"][2].__setitem__(0, {"a": 1}), "rationale_choices[2][0]"),
    (lambda r: r.pop("annot_id"), "missing field 'annot_id'"),
])
def test_vcr_rejects_malformed_records(tmp_path, mutate, expect):
    root = _copy("vcr", tmp_path)
    path = root / "val.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    mutate(rec)
    lines[1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        read_vcr(root, "val")
    assert str(e.value).startswith(f"{path}:2: ") and expect in str(e.value)
    ds = read_vcr(root, "val", on_error="skip")
    assert [s.id for s in ds.samples] == ["val-0"] and ds.skipped[0].source == f"{path}:2"


def test_vcr_bad_json_line_and_missing_file(tmp_path):
    root = _copy("vcr", tmp_path)
    path = root / "val.jsonl"
    path.write_text(path.read_text() + "{not json}\n")
    with pytest.raises(InputError, match=rf"{path}:3: malformed JSON"):
        read_vcr(root, "val")
    with pytest.raises(InputError, match="VCR splits are train, val, test"):
        read_vcr(root, "dev")
    with pytest.raises(InputError, match="train.jsonl"):
        read_vcr(root, "train")


# ----------------------------------------------------------------------------------------------- the registry


def test_reader_registry_lists_the_builtin_readers_and_refuses_unknown_names(tmp_path):
    from mad_pipeline.data import DATASETS

    assert DATASETS == ("jsonl", "webdataset", "parquet", "csv", "vqa", "snli-ve", "vcr")
    known = "jsonl, webdataset, parquet, csv, vqa, snli-ve, vcr"
    with pytest.raises(InputError, match=rf"unknown dataset 'nope'; known: {known}"):
        load_dataset("nope", tmp_path, split="train")
    with pytest.raises(InputError, match="--split is required with --dataset vcr"):
        load_dataset("vcr", FIX / "vcr")


def test_a_reader_registered_from_outside_the_package_is_found(tmp_path, monkeypatch):
    """What a plugin module does: register a reader under its own dataset name; load_dataset then reads with it."""
    import mad_pipeline.data as data
    from mad_pipeline.data import Dataset, Sample, register_reader, registry

    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # forget the plugin afterwards

    @register_reader("toy")
    def read_toy(root: Path, split: str, on_error: str = "fail") -> Dataset:
        return Dataset(name="toy", root=root, split=split, samples=[Sample("t0", None, (f"a {split} text",))])

    ds = load_dataset("toy", tmp_path, split="dev")
    assert ds.name == "toy" and ds.samples[0].texts == ("a dev text",)
    assert data.DATASETS[-1] == "toy"
    register_reader("toy", read_toy)  # the same name again (a module imported twice): the later one is kept
    assert data.DATASETS.count("toy") == 1
    with pytest.raises(ValueError, match="built-in JSONL manifest reader"):
        register_reader("jsonl", read_toy)


def test_jsonl_readers_share_one_skip_or_fail_loop(tmp_path):
    """Blank lines are ignored; a bad line fails naming file:line, or is recorded with its id under skip."""
    from mad_pipeline.data.jsonio import peek_field, read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": "b", "bad": 1}\n{"id": "a"}\nnot json\n\xff\n')

    def parse(rec, seen):
        if rec.get("bad"):
            raise ValueError("bad record")
        if rec["id"] in seen:
            raise ValueError("duplicate")
        return Sample(rec["id"], None, ())

    with pytest.raises(InputError, match=rf"^{path}:3: bad record$"):
        read_jsonl(path, parse, sample_id=lambda line: peek_field(line, "id"))
    samples, skipped = read_jsonl(path, parse, sample_id=lambda line: peek_field(line, "id"), on_error="skip")
    assert [s.id for s in samples] == ["a"]
    assert [(k.source.rsplit(":", 1)[1], k.sample_id, k.reason.split(" (")[0]) for k in skipped] == [
        ("3", "b", "bad record"), ("4", "a", "duplicate"), ("5", None, "malformed JSON"),
        ("6", None, "not valid UTF-8"),
    ]
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="empty.jsonl: no records"):
        read_jsonl(tmp_path / "empty.jsonl", parse, sample_id=lambda line: None)
