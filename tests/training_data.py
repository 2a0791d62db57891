"""Small datasets that tests build: PNG files written by hand and kohya-style image folders."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

# Real Danbooru tags, so the bundled tag database puts them in their categories.
GENERAL = ("long hair", "smile", "blue eyes", "short hair", "open mouth", "blush", "skirt",
           "shirt", "hat", "dress", "ribbon", "gloves", "jacket", "flower", "outdoors", "sky",
           "cloud", "day", "tree", "water", "holding", "sitting", "standing", "looking at viewer",
           "brown hair", "black hair", "red eyes", "twintails", "white shirt", "simple background",
           "white background", "upper body", "full body", "closed eyes", "hair ornament",
           "long sleeves", "bow", "jewelry", "thighhighs", "school uniform")  # fmt: skip
SPECIAL = ("1girl", "solo", "1boy", "2girls")
CHARACTERS = ("hatsune miku", "hakurei reimu", "kirisame marisa")
COPYRIGHTS = ("vocaloid", "touhou")
QUALITY_AND_RATING = ("masterpiece", "best quality", "general", "sensitive")


def write_png(path: Path, width: int, height: int) -> None:
    """A valid grey PNG, written without an image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_kohya_folder(root: Path, images: int, seed: int = 0) -> Path:
    """``root/10_subject/`` with ``images`` small PNGs, each with a .txt of tags (special,
    6-30 general, maybe a character and copyright, quality, rating), some with a .caption."""
    rng = random.Random(seed)
    folder = root / "10_subject"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        name = f"image{index:03d}"
        write_png(folder / f"{name}.png", rng.choice((32, 48, 64)), rng.choice((32, 48, 64)))
        tags = [rng.choice(SPECIAL), *rng.sample(GENERAL, rng.randint(6, 30))]
        if rng.random() < 0.5:
            tags += [rng.choice(CHARACTERS), rng.choice(COPYRIGHTS)]
        tags += rng.sample(QUALITY_AND_RATING, 2)
        (folder / f"{name}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")
        if rng.random() < 0.5:
            caption = f"A picture with {tags[1]} and {tags[2]}. It is drawn in a clean style."
            (folder / f"{name}.caption").write_text(caption, encoding="utf-8")
    return root


__all__ = ["make_kohya_folder", "write_png"]
