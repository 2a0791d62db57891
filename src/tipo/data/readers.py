"""Datasets people already have, read as ``TrainingRecord``s.

* a kohya-ss style image folder (``10_name/img.png`` + ``img.txt`` holding comma-separated tags,
  optionally ``img.caption`` holding a sentence or two; subfolders are read too): tags are sorted
  into categories by the tag database (bundled, plus ``tag_csv``), the image size comes from the
  file header, the caption becomes the record's long caption;
* JSON Lines (``.jsonl``), one raw row per line, in the columns of the TIPO training sets
  (Danbooru metadata, Coyo-HD, GBC10M: see records.py);
* Parquet files and Hugging Face datasets (a Hub id or ``datasets`` folder), read through the
  ``datasets`` package, streaming, so a dataset of millions of rows is never in memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError, MissingDependencyError, first_line
from ..tags import Category, TagDatabase
from .records import DANBOORU_COLUMNS, TrainingRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# kohya's caption files: tags, and (ours) an optional natural-language caption beside them.
TAG_SUFFIX, CAPTION_SUFFIX = ".txt", ".caption"


def read_records(source: str | Path, db: TagDatabase | None = None) -> Iterator[TrainingRecord]:
    """Records from a kohya folder, a ``.jsonl`` file, a ``.parquet`` file or a HF dataset id."""
    path = Path(source).expanduser()
    if path.is_dir() and _has_images(path):
        return read_kohya_folder(path, db)
    if path.is_file() and path.suffix == ".jsonl":
        return (TrainingRecord.from_row(row) for row in read_jsonl(path))
    if path.is_file() and path.suffix != ".parquet":
        raise InvalidRequestError(
            f"cannot read {path}", hint="give a kohya image folder, a .jsonl or .parquet file"
        )
    return (TrainingRecord.from_row(row) for row in read_hf_rows(str(source)))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidRequestError(f"{path}:{number}: invalid JSON: {error}") from None
            if not isinstance(row, dict):
                raise InvalidRequestError(f"{path}:{number}: a row must be a JSON object")
            yield row


def read_hf_rows(source: str, split: str = "train") -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file, a ``datasets`` folder or a Hub dataset, streamed."""
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError.for_extra("datasets", "train", "Reading Parquet") from None
    try:
        if source.endswith(".parquet"):
            stream = datasets.load_dataset(
                "parquet", data_files=source, split=split, streaming=True
            )
        else:
            stream = datasets.load_dataset(source, split=split, streaming=True)
    except Exception as error:  # datasets raises many kinds: not found, offline, bad format
        reason = first_line(error)
        raise InvalidRequestError(
            f"no training data at {source!r}: {reason}",
            hint="give a kohya image folder, a .jsonl or .parquet file, or a Hugging Face "
            "dataset id (downloads need the network)",
        ) from None
    yield from stream


def read_kohya_folder(folder: Path, db: TagDatabase | None = None) -> Iterator[TrainingRecord]:
    """One record per image that has a tag file, in path order (stable across runs)."""
    db = db if db is not None else TagDatabase.bundled()
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        tag_file = image.with_suffix(TAG_SUFFIX)
        if not tag_file.is_file():
            continue
        row = kohya_row(tag_file.read_text(encoding="utf-8"), db)
        caption_file = image.with_suffix(CAPTION_SUFFIX)
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        if caption:
            row["pixtral_caption"] = caption
        row["width"], row["height"] = image_size(image) or (None, None)
        yield TrainingRecord.from_row(row)


def kohya_row(text: str, db: TagDatabase) -> dict[str, Any]:
    """A Danbooru-style row from a kohya tag file: its tags sorted into the row's columns."""
    tags = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
    by_category = db.classify(tags)
    row: dict[str, Any] = {}
    for category in Category:  # quality and rating columns share their category's name
        if by_category[category]:
            row[DANBOORU_COLUMNS.get(category.value, category.value)] = list(by_category[category])
    return row


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or WebP header; None if unknown (no image library)."""
    with path.open("rb") as handle:
        head = handle.read(64)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"\xff\xd8":
            handle.seek(2)
            return _jpeg_size(handle)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        return width, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_size(handle: Any) -> tuple[int, int] | None:
    """Walk the JPEG markers to the frame header (SOF0-SOF15 but DHT/JPG/DAC)."""
    while True:
        marker = handle.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        length = struct.unpack(">H", handle.read(2))[0]
        if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">xHH", handle.read(5))
            return width, height
        handle.seek(length - 2, 1)


__all__ = ["image_size", "kohya_row", "read_jsonl", "read_kohya_folder", "read_records"]
