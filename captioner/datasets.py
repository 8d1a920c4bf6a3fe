"""Readers for the common caption dataset formats, and the torch Dataset/collate used in training.

Every reader returns a `CaptionSet`: one `Item` per image (path + all its captions), in file order, plus
the images the annotations name that are not on disk (reported up front, never a crash mid-epoch).

Formats (auto-detected, or forced with `format=`):
  coco      COCO captions json: {"images": [{id, file_name}], "annotations": [{image_id, caption}]}
  karpathy  Karpathy split json (dataset_coco.json / dataset_flickr8k.json):
            {"images": [{filename, [filepath], split, sentences: [{raw}]}]}; split "train" includes "restval"
  flickr8k  Flickr8k.token.txt ("<image>#<n>\\t<caption>"); the split list Flickr_8k.<split>Images.txt
            beside it selects images (train / dev / test)
  jsonl     one object per line: {"image": path, "caption": str} or {"image": path, "captions": [str]}
  csv       header with `image` and `caption` (or `captions`, "|"-separated) columns
  msrvtt    MSR-VTT json: {"videos": [{video_id, split}], "sentences": [{video_id, caption}]}; splits
            train / validate (our "val") / test
  msvd      MSVD: AllVideoDescriptions.txt ("<video_id> <caption>" per line, "#" comments) or the
            MSR Video Description Corpus csv (VideoID, Start, End, Language, Description; English rows)
In jsonl and csv, a row may name a `video` instead of an `image`: images and clips can be mixed (a video
model sees an image as a still clip). Relative paths are resolved against `images_dir` (default: the
annotation file's folder); a video id without an extension (MSR-VTT, MSVD) matches `<id>.mp4`, `.avi`, ...
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .config import DATASET_FORMATS
from .errors import DatasetError
from .media import VIDEO_EXTENSIONS, is_video, stack_or_list
from .grounding import mentions_person
from .vocab import Vocabulary, tokenize

FORMATS = DATASET_FORMATS
SPLITS = ("train", "val", "test")


@dataclass
class Item:
    image: str  # the image or video file: absolute or images_dir-relative path, resolved
    captions: list[str]
    id: str | int
    objects: list[str] = field(default_factory=list)  # words naming the main subject (jsonl `objects`), if given
    weight: float = 1.0  # how often training draws it, relative to the others (its source's --data-weight)


@dataclass
class CaptionSet:
    items: list[Item]
    missing: list[str] = field(default_factory=list)  # image paths named by the annotations but not on disk
    source: str = ""
    format: str = ""

    def missing_report(self, limit: int = 5) -> str:
        if not self.missing:
            return ""
        names = ", ".join(os.path.basename(p) for p in self.missing[:limit])
        more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
        return (f"{self.source}: {len(self.missing)} of {len(self.missing) + len(self.items)} images "
                f"are missing and will be skipped: {names}{more}")


def detect_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".jsonl":
        return "jsonl"
    if ext == ".csv":
        header = next(csv.reader([_first_line(path)]), [])
        return "msvd" if {"VideoID", "Description"} <= set(header) else "csv"
    if ext == ".txt":  # Flickr8k lines are "<image>#<n>\t<caption>"; MSVD's "<video_id> <caption>"
        first = _first_line(path)
        return "msvd" if first and not re.match(r"^\S+#\d+\t", first) else "flickr8k"
    if ext == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return "coco"
        if isinstance(data, dict) and "videos" in data and "sentences" in data:
            return "msrvtt"
        if isinstance(data, dict) and data.get("images") and "sentences" in data["images"][0]:
            return "karpathy"
        raise DatasetError(f"{path}: json is neither COCO captions (images + annotations), Karpathy split "
                           f"(images with sentences) nor MSR-VTT (videos + sentences); pass --format one of: "
                           f"{', '.join(FORMATS)}")
    raise DatasetError(f"{path}: cannot tell the format from extension {ext!r}; pass --format one of: "
                       f"{', '.join(FORMATS)}")


def _first_line(path: str) -> str:
    """The first non-empty, non-comment line of a text file ("" if there is none or it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return next((ln for ln in f if ln.strip() and not ln.startswith("#")), "")
    except OSError:
        return ""


def read_captions(path: str, images_dir: str | None = None, format: str | None = None,
                  split: str | None = None) -> CaptionSet:
    """Read any supported annotation file. `split` is needed by karpathy and used by flickr8k."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    try:
        fmt = format or detect_format(path)
        if fmt not in READERS:
            raise DatasetError(f"unknown dataset format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        raw = READERS[fmt](path, split)  # [(relative image path, captions, id[, objects])]
    except UnicodeDecodeError:
        raise DatasetError(f"{path}:{_first_bad_utf8_line(path)}: not UTF-8 text; annotation files are UTF-8") from None
    if images_dir is None:  # the annotation file's folder, its images/ subfolder, or ../images (common layouts)
        folder = os.path.dirname(os.path.abspath(path))
        found = [f for f in (folder, os.path.join(folder, "images"), os.path.join(os.path.dirname(folder), "images"))
                 if raw and os.path.isfile(_resolve(f, raw[0][0]))]
        images_dir = found[0] if found else folder
    items, missing = [], []
    for rel, captions, item_id, *objects in raw:
        full = _resolve(images_dir, rel)
        if os.path.isfile(full):
            items.append(Item(full, captions, item_id, *objects))
        else:
            missing.append(full)
    if not items:
        hint = f" (looked in {images_dir}; first missing: {missing[0]})" if missing else ""
        raise DatasetError(f"{path}: no usable images with captions{hint}")
    return CaptionSet(items, missing, path, fmt)


def _first_bad_utf8_line(path: str) -> int:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return 1


def _resolve(folder: str, rel: str) -> str:
    """folder/rel; a name without an extension (a video id) is looked for with each video extension."""
    full = os.path.join(folder, rel)
    if os.path.splitext(rel)[1] or os.path.isfile(full):
        return full
    for ext in VIDEO_EXTENSIONS:
        if os.path.isfile(full + ext):
            return full + ext
    return full + ".mp4"  # reported as missing under the likeliest name


def read_and_report(path: str, images_dir: str | None, format: str | None, split: str | None, what: str,
                    log: Callable[[str], None]) -> CaptionSet:
    """read_captions, then tell the user what was read and which images are missing (before any work)."""
    data = read_captions(path, images_dir, format, split)
    if data.missing:
        log(f"warning: {data.missing_report()}")
    n_caps = sum(len(it.captions) for it in data.items)
    log(f"{what}: {count_media(data.items)}, {n_caps} captions ({data.format}: {path})")
    return data


def count_media(items: Sequence[Item]) -> str:
    """'80 images', '30 videos', '2 images, 8 videos'."""
    n_vid = sum(is_video(it.image) for it in items)
    kinds = [f"{n} {kind}" for n, kind in ((len(items) - n_vid, "images"), (n_vid, "videos")) if n]
    return ", ".join(kinds) or "0 images"


def _load_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid json at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None


def _read_coco(path: str, split: str | None):
    data = _load_json(path)
    try:
        images = {img["id"]: img["file_name"] for img in data["images"]}
        captions: dict = {}
        for i, ann in enumerate(data["annotations"]):
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: malformed COCO captions file (missing key {exc} in images/annotations)") from None
    # Images without captions (e.g. coco-mini's unannotated val images) are not caption items.
    return [(images[i], caps, i) for i, caps in captions.items() if i in images]


def _read_karpathy(path: str, split: str | None):
    if split is None:
        raise DatasetError(f"{path}: Karpathy split files hold all splits; pass --split train, val or test")
    wanted = {"train", "restval"} if split == "train" else {split}
    data = _load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f'{path}: not a Karpathy split file (expected {{"images": [...]}})')
    out = []
    for n, img in enumerate(images):
        try:
            if img["split"] in wanted:
                rel = os.path.join(img.get("filepath", ""), img["filename"])
                out.append((rel, [s["raw"] for s in img["sentences"]], img.get("cocoid", img.get("imgid", n))))
        except KeyError as exc:
            raise DatasetError(f"{path}: images[{n}] lacks key {exc}") from None
        except (TypeError, AttributeError):
            raise DatasetError(f"{path}: images[{n}] is malformed; expected "
                               f"{{filename, split, sentences: [{{raw}}]}}") from None
    return out


def _read_flickr8k(path: str, split: str | None):
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, sep, caption = line.rstrip("\n").partition("\t")
            name, hash_, _ = key.partition("#")
            if not sep or not hash_:
                raise DatasetError(f"{path}:{lineno}: expected '<image>#<n>\\t<caption>', got {line[:60]!r}")
            name = re.sub(r"(\.jpe?g)\.\d+$", r"\1", name)  # the real file has keys like 'x.jpg.1#0' for 'x.jpg'

            captions.setdefault(name, []).append(caption.strip())
    names = list(captions)
    if split is not None:
        list_name = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                     "test": "Flickr_8k.testImages.txt"}[split]
        list_path = os.path.join(os.path.dirname(path), list_name)
        if not os.path.isfile(list_path):
            raise DatasetError(f"{path}: split {split!r} needs {list_name} beside the token file")
        with open(list_path, encoding="utf-8") as f:
            names = [n.strip() for n in f if n.strip() and n.strip() in captions]
    return [(n, captions[n], n) for n in names]


def _read_jsonl(path: str, split: str | None):
    by_image: dict[str, list[str]] = {}
    objects: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid json at column {exc.colno} "
                                   f"({exc.msg.removesuffix(' at')}); expected one JSON object per line") from None
            _add_row(by_image, row, f"{path}:{lineno}", split)
            if isinstance(row, dict) and "objects" in row:
                words = row["objects"]
                if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                    raise DatasetError(f"{path}:{lineno}: expected 'objects' to be a list of words")
                objects.setdefault(row.get("image") or row["video"], []).extend(words)
    return [(k, v, k, objects.get(k, [])) for k, v in by_image.items()]


def _read_csv(path: str, split: str | None):
    by_image: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):
            if "captions" in row and row["captions"] is not None:
                row = {**row, "captions": [c.strip() for c in row["captions"].split("|") if c.strip()]}
            _add_row(by_image, row, f"{path}:{lineno}", split)
    return [(k, v, k) for k, v in by_image.items()]


def _add_row(by_image: dict, row, where: str, split: str | None) -> None:
    if not isinstance(row, dict) or not (row.get("image") or row.get("video")):
        raise DatasetError(f"{where}: expected an 'image' or 'video' field")
    if split is not None and row.get("split") not in (None, "", split):
        return
    caps = row.get("captions") or ([row["caption"]] if row.get("caption") else None)
    if isinstance(caps, str) or not caps or not all(isinstance(c, str) for c in caps):
        raise DatasetError(f"{where}: expected 'caption' (text) or 'captions' (list of text)")
    by_image.setdefault(row.get("image") or row["video"], []).extend(caps)


def _read_msrvtt(path: str, split: str | None):
    data = _load_json(path)
    wanted = {"val": "validate"}.get(split, split)
    try:
        ids = [v["video_id"] for v in data["videos"] if split is None or v.get("split") == wanted]
        captions: dict = {}
        for s in data["sentences"]:
            captions.setdefault(s["video_id"], []).append(s["caption"])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: malformed MSR-VTT file (missing key {exc} in videos/sentences)") from None
    return [(v, captions[v], v) for v in ids if v in captions]


def _read_msvd(path: str, split: str | None):
    captions: dict[str, list[str]] = {}
    if path.lower().endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.DictReader(f), 2):
                try:
                    if row["Language"] == "English" and (row["Description"] or "").strip():
                        vid = f"{row['VideoID']}_{row['Start']}_{row['End']}"
                        captions.setdefault(vid, []).append(row["Description"].strip())
                except KeyError as exc:
                    raise DatasetError(f"{path}:{lineno}: MSVD csv lacks column {exc}") from None
    else:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip() or line.startswith("#"):
                    continue
                vid, _, caption = line.strip().partition(" ")
                if not caption.strip():
                    raise DatasetError(f"{path}:{lineno}: expected '<video_id> <caption>', got {line[:60]!r}")
                captions.setdefault(vid, []).append(caption.strip())
    return [(v, caps, v) for v, caps in captions.items()]


READERS: dict[str, Callable] = {"coco": _read_coco, "karpathy": _read_karpathy, "flickr8k": _read_flickr8k,
                                "jsonl": _read_jsonl, "csv": _read_csv, "msrvtt": _read_msrvtt, "msvd": _read_msvd}


def shows_person(item: Item) -> bool:
    """Whether at least half of the item's captions mention a person (grounding.PERSON_WORDS)."""
    said = sum(mentions_person(tokenize(c)) for c in item.captions)
    return 2 * said >= len(item.captions)


def training_weights(items: list[Item], person_share: float = 0.0) -> torch.Tensor:
    """How often training draws each item (N,): its source's weight, and with `person_share` > 0 the photos
    that show a person re-weighted to make up that share of the draws, the others the rest. COCO's person
    subset has 81 % of such photos, so a decoder trained on it as drawn learns "a man ..." as the prior of
    every photo; COCO as a whole has about half."""
    weights = torch.tensor([it.weight for it in items], dtype=torch.float64)
    if person_share > 0:
        person = torch.tensor([shows_person(it) for it in items])
        if person.any() and not person.all():
            total = weights.sum()
            weights = torch.where(person, weights * person_share * total / weights[person].sum(),
                                  weights * (1 - person_share) * total / weights[~person].sum())
    return weights


class CaptionPairs(Dataset):
    """One example per (image, caption) pair. `load(i)` gives image i's input: a preprocessed image tensor
    (3,H,W), or its cached features (P,E); the caption comes encoded (BOS ... EOS), at most max_len words."""

    def __init__(self, items: list[Item], vocab: Vocabulary, load: Callable[[int], torch.Tensor], max_len: int):
        self.load = load
        self.pairs = [(i, vocab.encode(c, max_len)) for i, item in enumerate(items) for c in item.captions]
        self.image_index = torch.tensor([i for i, _ in self.pairs], dtype=torch.long)  # (pairs,) image of each

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int):
        i, ids = self.pairs[idx]
        return self.load(i), torch.tensor(ids, dtype=torch.long), i


def collate_pairs(batch):
    """-> inputs (B,...) (a list when images and clips are mixed), captions (B,T+1) padded with PAD=0,
    item indices (B,)."""
    inputs, caps, idx = zip(*batch)
    captions = torch.nn.utils.rnn.pad_sequence(list(caps), batch_first=True, padding_value=0)
    return stack_or_list(inputs), captions, torch.tensor(idx)
