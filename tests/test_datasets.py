"""Dataset readers on the real annotation files (coco-mini, Flickr8k) and on small faithful fixtures
(Karpathy split json, JSONL, CSV) that point at real coco-mini images; CaptionPairs + collate_pairs."""
import csv
import json
import os
import shutil

import pytest
import torch

from captioner.datasets import (
    FORMATS,
    CaptionPairs,
    CaptionSet,
    Item,
    collate_pairs,
    detect_format,
    read_captions,
)
from captioner.errors import DatasetError
from captioner.vocab import Vocabulary, tokenize
from conftest import DATA

COCO_MINI = DATA / "coco-mini"
COCO_TRAIN_JSON = COCO_MINI / "annotations" / "captions_train2017.json"
COCO_VAL_JSON = COCO_MINI / "annotations" / "captions_val2017.json"
FLICKR = DATA / "flickr8k"
FLICKR_TOKENS = FLICKR / "Flickr8k.token.txt"
FLICKR_IMAGES = FLICKR / "images"
FORMAT_LIST = "coco, karpathy, flickr8k, jsonl, csv, msrvtt, msvd"

# Six real coco-mini train images (file name -> COCO id) used by the Karpathy/JSONL/CSV fixtures.
COCO_FILES = sorted(os.listdir(COCO_MINI / "train2017"))[:6]


def _coco_captions():
    """{file_name: (id, [captions])} for coco-mini train, read straight from the json (not via the package)."""
    data = json.loads(COCO_TRAIN_JSON.read_text())
    names = {img["id"]: img["file_name"] for img in data["images"]}
    out = {}
    for ann in data["annotations"]:
        name = names[ann["image_id"]]
        out.setdefault(name, (ann["image_id"], []))[1].append(ann["caption"])
    return out


# --- COCO (real files) ------------------------------------------------------------------------------------

def test_coco_mini_train_reads_80_images_with_5_captions_each():
    data = read_captions(str(COCO_TRAIN_JSON), str(COCO_MINI / "train2017"))
    assert isinstance(data, CaptionSet)
    assert data.format == "coco"
    assert data.source == str(COCO_TRAIN_JSON)
    assert len(data.items) == 80
    assert data.missing == []
    assert data.missing_report() == ""
    assert all(len(item.captions) == 5 for item in data.items)
    assert sum(len(item.captions) for item in data.items) == 400
    assert {os.path.basename(item.image) for item in data.items} == set(os.listdir(COCO_MINI / "train2017"))
    assert all(os.path.isabs(item.image) and os.path.isfile(item.image) for item in data.items)
    # items come in annotation order; ids are COCO's integer image ids
    first = data.items[0]
    assert first.id == 125870
    assert first.image == str(COCO_MINI / "train2017" / "000000125870.jpg")
    assert first.captions[0] == "An airport filled with large passenger jets parked next to each other."


def test_coco_mini_val_has_79_annotated_images_of_159():
    data = read_captions(str(COCO_VAL_JSON), str(COCO_MINI / "val2017"))
    assert len(os.listdir(COCO_MINI / "val2017")) == 159
    assert len(data.items) == 79
    assert data.missing == []
    assert all(len(item.captions) == 5 for item in data.items)
    assert len({item.id for item in data.items}) == 79


def test_coco_images_without_captions_are_not_items(tmp_path):
    ann = {
        "images": [{"id": 1, "file_name": COCO_FILES[0]}, {"id": 2, "file_name": COCO_FILES[1]}],
        "annotations": [{"image_id": 1, "id": 10, "caption": "one"}, {"image_id": 1, "id": 11, "caption": "two"}],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(ann))
    data = read_captions(str(path), str(COCO_MINI / "train2017"))
    assert [(os.path.basename(i.image), i.captions, i.id) for i in data.items] == [(COCO_FILES[0], ["one", "two"], 1)]
    assert data.missing == []


def test_coco_default_images_dir_is_the_annotation_folder(tmp_path):
    shutil.copy(COCO_MINI / "train2017" / COCO_FILES[0], tmp_path / COCO_FILES[0])
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 7, "file_name": COCO_FILES[0]}],
                                "annotations": [{"image_id": 7, "caption": "a photo"}]}))
    data = read_captions(str(path))
    assert [i.image for i in data.items] == [str(tmp_path / COCO_FILES[0])]


@pytest.mark.parametrize(
    "ann, key",
    [
        ({"images": [{"id": 1}], "annotations": []}, "'file_name'"),
        ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}, "'caption'"),
        ({"images": [{"file_name": "a.jpg"}], "annotations": []}, "'id'"),
    ],
)
def test_coco_missing_key_raises_dataset_error(tmp_path, ann, key):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(ann))
    with pytest.raises(DatasetError) as info:
        read_captions(str(path), str(COCO_MINI / "train2017"), format="coco")
    msg = str(info.value)
    assert str(path) in msg
    assert "malformed COCO captions file" in msg
    assert key in msg


# --- Flickr8k (real token file, 4 real images) ------------------------------------------------------------

def test_flickr8k_without_split_reads_the_4_images_on_disk():
    data = read_captions(str(FLICKR_TOKENS), str(FLICKR_IMAGES))
    assert data.format == "flickr8k"
    assert [item.id for item in data.items] == [
        "1000268201_693b08cb0e.jpg", "1002674143_1b742ab4b8.jpg", "141755292_7a0b3364cf.jpg", "667626_18933d713e.jpg",
    ]
    assert all(len(item.captions) == 5 for item in data.items)
    assert data.items[0].image == str(FLICKR_IMAGES / "1000268201_693b08cb0e.jpg")
    # captions are stripped of the trailing newline/space around the tab-separated text
    assert data.items[0].captions[0] == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    # The token file names 8092 images: the 8091 photos plus 2258277193_586949ec62.jpg, which is not among them
    # (its first caption's key has the typo '.jpg.1', merged by the reader). 8092 - 4 on disk = 8088.
    assert len(data.missing) == 8088
    assert not any(p.endswith(".jpg.1") for p in data.missing)
    assert str(FLICKR_IMAGES / "1001773457_577c3a7d70.jpg") in data.missing


def test_flickr8k_missing_report_names_a_few_files():
    data = read_captions(str(FLICKR_TOKENS), str(FLICKR_IMAGES))
    assert data.missing_report() == (
        f"{FLICKR_TOKENS}: 8088 of 8092 images are missing and will be skipped: "
        "1001773457_577c3a7d70.jpg, 1003163366_44323f5815.jpg, 1007129816_e794419615.jpg, "
        "1007320043_627395c3d8.jpg, 1009434119_febe49276a.jpg and 8083 more"
    )
    assert data.missing_report(limit=2).endswith(
        "skipped: 1001773457_577c3a7d70.jpg, 1003163366_44323f5815.jpg and 8086 more")


def test_flickr8k_train_split_picks_only_train_images():
    train_names = {n.strip() for n in (FLICKR / "Flickr_8k.trainImages.txt").read_text().splitlines() if n.strip()}
    data = read_captions(str(FLICKR_TOKENS), str(FLICKR_IMAGES), split="train")
    # in the order of Flickr_8k.trainImages.txt; 141755292_7a0b3364cf.jpg is a dev image
    assert [item.id for item in data.items] == [
        "1000268201_693b08cb0e.jpg", "667626_18933d713e.jpg", "1002674143_1b742ab4b8.jpg",
    ]
    assert all(item.id in train_names for item in data.items)
    assert len(data.missing) == 6000 - 3
    assert all(os.path.basename(p) in train_names for p in data.missing)


def test_flickr8k_val_split_reads_the_dev_list():
    data = read_captions(str(FLICKR_TOKENS), str(FLICKR_IMAGES), split="val")
    assert [item.id for item in data.items] == ["141755292_7a0b3364cf.jpg"]
    assert len(data.missing) == 999


def test_flickr8k_test_split_has_no_image_on_disk():
    with pytest.raises(DatasetError) as info:
        read_captions(str(FLICKR_TOKENS), str(FLICKR_IMAGES), split="test")
    msg = str(info.value)
    assert f"{FLICKR_TOKENS}: no usable images with captions" in msg
    assert f"looked in {FLICKR_IMAGES}" in msg


def test_flickr8k_split_needs_the_list_beside_the_token_file(tmp_path):
    tokens = tmp_path / "Flickr8k.token.txt"
    tokens.write_text("1000268201_693b08cb0e.jpg#0\tA girl .\n")
    with pytest.raises(DatasetError, match=r"split 'train' needs Flickr_8k\.trainImages\.txt beside the token file"):
        read_captions(str(tokens), str(FLICKR_IMAGES), split="train")


def test_flickr8k_bad_line_names_file_and_line(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1000268201_693b08cb0e.jpg#0\tA girl .\n\nno tab or hash here\n")
    with pytest.raises(DatasetError) as info:
        read_captions(str(tokens), str(FLICKR_IMAGES))
    assert str(info.value).startswith(f"{tokens}:3: expected '<image>#<n>\\t<caption>'")


def test_flickr8k_jpg_1_typo_is_merged_into_its_image(tmp_path):
    # The exact five lines of the real token file for this image (line 6731 carries the '.jpg.1' typo).
    lines = [l for l in FLICKR_TOKENS.read_text().splitlines() if l.startswith("2258277193_586949ec62")]
    assert len(lines) == 5 and lines[0].startswith("2258277193_586949ec62.jpg.1#0\t")
    tokens = tmp_path / "Flickr8k.token.txt"
    tokens.write_text("\n".join(lines) + "\n")
    shutil.copy(FLICKR_IMAGES / "667626_18933d713e.jpg", tmp_path / "2258277193_586949ec62.jpg")
    data = read_captions(str(tokens))
    assert data.missing == []
    assert [len(item.captions) for item in data.items] == [5]
    assert data.items[0].captions[0] == "people waiting for the subway"


# --- Karpathy split json (fixture pointing at real coco-mini images) --------------------------------------

KARPATHY_SPLITS = ["train", "train", "restval", "val", "test", "test"]


@pytest.fixture
def karpathy(tmp_path):
    coco = _coco_captions()
    images = []
    for n, (name, split) in enumerate(zip(COCO_FILES, KARPATHY_SPLITS)):
        cocoid, caps = coco[name]
        images.append({
            "filepath": "train2017", "filename": name, "imgid": n, "split": split, "cocoid": cocoid,
            "sentids": list(range(5 * n, 5 * n + len(caps))),
            "sentences": [{"raw": c, "tokens": tokenize(c), "imgid": n, "sentid": 5 * n + k}
                          for k, c in enumerate(caps)],
        })
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path, coco


def test_karpathy_detected(karpathy):
    path, _ = karpathy
    assert detect_format(str(path)) == "karpathy"


def test_karpathy_train_includes_restval(karpathy):
    path, coco = karpathy
    data = read_captions(str(path), str(COCO_MINI), split="train")
    assert data.format == "karpathy"
    assert [os.path.basename(i.image) for i in data.items] == COCO_FILES[:3]
    assert [i.id for i in data.items] == [coco[name][0] for name in COCO_FILES[:3]]
    assert data.items[0].image == str(COCO_MINI / "train2017" / COCO_FILES[0])
    assert data.items[0].captions == coco[COCO_FILES[0]][1]
    assert data.missing == []


@pytest.mark.parametrize("split, indices", [("val", [3]), ("test", [4, 5])])
def test_karpathy_val_and_test_splits(karpathy, split, indices):
    path, coco = karpathy
    data = read_captions(str(path), str(COCO_MINI), split=split)
    assert [os.path.basename(i.image) for i in data.items] == [COCO_FILES[k] for k in indices]
    assert [len(i.captions) for i in data.items] == [5] * len(indices)


def test_karpathy_without_split_raises(karpathy):
    path, _ = karpathy
    with pytest.raises(DatasetError, match="Karpathy split files hold all splits; pass --split train, val or test"):
        read_captions(str(path), str(COCO_MINI))


def test_karpathy_missing_image_is_reported_not_fatal(karpathy):
    path, _ = karpathy
    data = json.loads(path.read_text())
    data["images"].append({"filepath": "train2017", "filename": "000000999999.jpg", "split": "val",
                           "sentences": [{"raw": "nothing here", "tokens": ["nothing", "here"]}], "cocoid": 999999})
    path.write_text(json.dumps(data))
    out = read_captions(str(path), str(COCO_MINI), split="val")
    assert [os.path.basename(i.image) for i in out.items] == [COCO_FILES[3]]
    assert out.missing == [str(COCO_MINI / "train2017" / "000000999999.jpg")]
    assert out.missing_report() == f"{path}: 1 of 2 images are missing and will be skipped: 000000999999.jpg"


def test_karpathy_missing_key_names_the_entry(karpathy):
    path, _ = karpathy
    data = json.loads(path.read_text())
    del data["images"][1]["filename"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[1\] lacks key 'filename'"):
        read_captions(str(path), str(COCO_MINI), split="train")


def test_unknown_split_lists_splits(karpathy):
    path, _ = karpathy
    with pytest.raises(DatasetError, match="unknown split 'restval'; choose one of: train, val, test"):
        read_captions(str(path), str(COCO_MINI), split="restval")


# --- JSONL and CSV manifests (fixtures pointing at real coco-mini images) ---------------------------------

@pytest.fixture
def jsonl(tmp_path):
    rows = [
        {"image": f"train2017/{COCO_FILES[0]}", "caption": "a first caption"},
        {"image": f"train2017/{COCO_FILES[1]}", "captions": ["two a", "two b"], "split": "val"},
        {"image": f"train2017/{COCO_FILES[0]}", "caption": "a second caption", "split": "train"},
        {"image": str(COCO_MINI / "train2017" / COCO_FILES[2]), "captions": ["absolute path"]},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]))
    return path


def test_jsonl_reads_and_merges_rows(jsonl):
    assert detect_format(str(jsonl)) == "jsonl"
    data = read_captions(str(jsonl), str(COCO_MINI))
    assert data.format == "jsonl"
    assert [(os.path.basename(i.image), i.captions) for i in data.items] == [
        (COCO_FILES[0], ["a first caption", "a second caption"]),
        (COCO_FILES[1], ["two a", "two b"]),
        (COCO_FILES[2], ["absolute path"]),
    ]
    assert data.items[0].id == f"train2017/{COCO_FILES[0]}"
    assert data.items[0].image == str(COCO_MINI / "train2017" / COCO_FILES[0])


def test_jsonl_split_keeps_rows_of_that_split_and_rows_without_one(jsonl):
    data = read_captions(str(jsonl), str(COCO_MINI), split="train")
    assert [(os.path.basename(i.image), i.captions) for i in data.items] == [
        (COCO_FILES[0], ["a first caption", "a second caption"]),
        (COCO_FILES[2], ["absolute path"]),
    ]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"image": COCO_FILES[0], "caption": "ok"}) + "\n{not json\n")
    with pytest.raises(DatasetError) as info:
        read_captions(str(path), str(COCO_MINI / "train2017"))
    assert str(info.value) == (f"{path}:2: invalid json at column 2 (Expecting property name enclosed in double "
                               f"quotes); expected one JSON object per line")


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"caption": "no image"}, "expected an 'image' or 'video' field"),
        (["a", "list"], "expected an 'image' or 'video' field"),
        ({"image": "x.jpg"}, "expected 'caption' (text) or 'captions' (list of text)"),
        ({"image": "x.jpg", "captions": [1, 2]}, "expected 'caption' (text) or 'captions' (list of text)"),
    ],
)
def test_jsonl_bad_row_names_file_and_line(tmp_path, row, expected):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"image": COCO_FILES[0], "caption": "ok"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DatasetError) as info:
        read_captions(str(path), str(COCO_MINI / "train2017"))
    assert str(info.value) == f"{path}:2: {expected}"


def test_jsonl_captions_must_be_a_list(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"image": COCO_FILES[0], "captions": "a dog"}) + "\n")
    with pytest.raises(DatasetError, match=r":1: expected 'caption' \(text\) or 'captions' \(list of text\)"):
        read_captions(str(path), str(COCO_MINI / "train2017"))


def test_csv_reads_caption_and_pipe_separated_captions(tmp_path):
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerow([COCO_FILES[0], "a dog, on grass"])
        writer.writerow([COCO_FILES[1], "a cat"])
        writer.writerow([COCO_FILES[0], "another dog"])
    assert detect_format(str(path)) == "csv"
    data = read_captions(str(path), str(COCO_MINI / "train2017"))
    assert data.format == "csv"
    assert [(os.path.basename(i.image), i.captions) for i in data.items] == [
        (COCO_FILES[0], ["a dog, on grass", "another dog"]),
        (COCO_FILES[1], ["a cat"]),
    ]

    multi = tmp_path / "multi.csv"
    multi.write_text(f"image,captions\n{COCO_FILES[2]},one|two||three\n", encoding="utf-8")
    data = read_captions(str(multi), str(COCO_MINI / "train2017"))
    assert [i.captions for i in data.items] == [["one", "two", "three"]]


def test_csv_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text(f"image,caption\n{COCO_FILES[0]},a dog\n{COCO_FILES[1]},\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        read_captions(str(path), str(COCO_MINI / "train2017"))
    assert str(info.value) == f"{path}:3: expected 'caption' (text) or 'captions' (list of text)"


def test_csv_without_image_column(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text(f"file,caption\n{COCO_FILES[0]},a dog\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"{path}:2: expected an 'image' or 'video' field"):
        read_captions(str(path), str(COCO_MINI / "train2017"))


# --- format detection and general errors ------------------------------------------------------------------

def test_detect_format_on_real_files():
    assert detect_format(str(COCO_TRAIN_JSON)) == "coco"
    assert detect_format(str(COCO_VAL_JSON)) == "coco"
    assert detect_format(str(FLICKR_TOKENS)) == "flickr8k"
    assert detect_format("anything.JSONL") == "jsonl"  # extension only, case-insensitive, file not opened
    assert detect_format("anything.CSV") == "csv"


def test_detect_format_unknown_extension_lists_formats(tmp_path):
    path = tmp_path / "captions.xml"
    path.write_text("<captions/>")
    with pytest.raises(DatasetError) as info:
        detect_format(str(path))
    assert str(info.value) == f"{path}: cannot tell the format from extension '.xml'; pass --format one of: {FORMAT_LIST}"
    with pytest.raises(DatasetError, match=f"one of: {FORMAT_LIST}"):
        read_captions(str(path))


def test_detect_format_json_of_neither_kind(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"images": [{"file_name": "a.jpg"}]}))
    with pytest.raises(DatasetError) as info:
        detect_format(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: json is neither COCO captions")
    assert msg.endswith(f"pass --format one of: {FORMAT_LIST}")


def test_unknown_forced_format_lists_formats():
    assert FORMATS == ("coco", "karpathy", "flickr8k", "jsonl", "csv", "msrvtt", "msvd")
    with pytest.raises(DatasetError) as info:
        read_captions(str(COCO_TRAIN_JSON), str(COCO_MINI / "train2017"), format="xml")
    assert str(info.value) == f"unknown dataset format 'xml'; choose one of: {FORMAT_LIST}"


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"images": [\n  {"id": 1, "file_name": "a.jpg"},\n  oops\n], "annotations": []}\n')
    for fmt in (None, "coco", "karpathy"):
        with pytest.raises(DatasetError) as info:
            read_captions(str(path), format=fmt, split="train")
        msg = str(info.value)
        assert msg.startswith(f"{path}: invalid json at line 3, column 3:")


def test_json_that_is_not_utf8(tmp_path):
    path = tmp_path / "captions.json"
    path.write_bytes(b'{"images": "\xff\xfe"}')
    with pytest.raises(DatasetError, match=rf"{path}: not a UTF-8 text file"):
        read_captions(str(path))


def test_annotation_file_not_found(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DatasetError) as info:
        read_captions(str(path))
    assert str(info.value) == f"{path}: annotation file not found"
    with pytest.raises(DatasetError, match="annotation file not found"):
        read_captions(str(tmp_path))  # a folder is not an annotation file


def test_all_images_missing_raises(tmp_path):
    # The real COCO file with the wrong images dir: every image is missing.
    with pytest.raises(DatasetError) as info:
        read_captions(str(COCO_TRAIN_JSON), str(tmp_path))
    msg = str(info.value)
    assert msg.startswith(f"{COCO_TRAIN_JSON}: no usable images with captions (looked in {tmp_path}; first missing: ")
    assert msg.endswith(f"{tmp_path / '000000125870.jpg'})")


def test_a_caller_catching_value_error_catches_dataset_errors(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="captions.json"):  # DatasetError is a ValueError, for library callers
        read_captions(str(bad))


# --- CaptionPairs + collate_pairs -------------------------------------------------------------------------

def test_caption_pairs_and_collate_pad_with_zero():
    items = [Item("a.jpg", ["a dog runs", "a dog"], "a"), Item("b.jpg", ["the cat sleeps on a red sofa"], "b")]
    vocab = Vocabulary.build(["a dog runs", "a dog", "the cat"], min_freq=1)
    loaded = []

    def load(i):
        loaded.append(i)
        return torch.full((3, 4, 4), float(i))

    pairs = CaptionPairs(items, vocab, load, max_len=4)
    assert len(pairs) == 3
    assert loaded == []  # images are loaded lazily, per example

    x, caption, index = pairs[2]
    assert loaded == [1]
    assert x.shape == (3, 4, 4) and float(x[0, 0, 0]) == 1.0
    assert caption.dtype == torch.long
    assert caption.tolist() == vocab.encode("the cat sleeps on", max_len=4)  # truncated to 4 words + BOS/EOS
    assert len(caption) == 6 and index == 1

    inputs, captions, idx = collate_pairs([pairs[0], pairs[1], pairs[2]])
    assert inputs.shape == (3, 3, 4, 4)
    assert captions.shape == (3, 6)
    assert captions.dtype == torch.long
    assert idx.tolist() == [0, 0, 1]
    assert captions[0].tolist() == vocab.encode("a dog runs") + [0]
    assert captions[1].tolist() == vocab.encode("a dog") + [0, 0]
    assert captions[2].tolist() == vocab.encode("the cat sleeps on a red sofa", max_len=4)
    assert captions[:, 0].tolist() == [vocab.bos_id] * 3
    assert (captions == vocab.pad_id).sum().item() == 3


def test_caption_pairs_on_real_coco_mini():
    data = read_captions(str(COCO_TRAIN_JSON), str(COCO_MINI / "train2017"))
    items = data.items[:4]
    vocab = Vocabulary.build((c for it in items for c in it.captions), min_freq=1)
    pairs = CaptionPairs(items, vocab, lambda i: torch.zeros(7, 16), max_len=16)  # cached features (P,E)
    assert len(pairs) == 20
    loader = torch.utils.data.DataLoader(pairs, batch_size=8, shuffle=False, collate_fn=collate_pairs)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    inputs, captions, idx = batches[0]
    assert inputs.shape == (8, 7, 16)
    assert idx.tolist() == [0] * 5 + [1] * 3
    first_eight = items[0].captions + items[1].captions[:3]
    encoded = [vocab.encode(c, 16) for c in first_eight]
    longest = max(len(ids) for ids in encoded)
    assert captions.shape == (8, longest)
    for row, ids, cap in zip(captions.tolist(), encoded, first_eight):
        assert row == ids + [0] * (longest - len(ids))
        assert vocab.decode(row) == " ".join(tokenize(cap)[:16])


def test_count_media_names_images_and_videos_by_extension():
    from captioner.datasets import Item, count_media

    def items(*names):
        return [Item(n, ["a caption"], i) for i, n in enumerate(names)]

    assert count_media(items("a.jpg", "b.png")) == "2 images"
    assert count_media(items("a.mp4", "b.avi", "c.webm")) == "3 videos"
    assert count_media(items("a.jpg", "b.mp4")) == "1 images, 1 videos"
    assert count_media([]) == "0 images"
