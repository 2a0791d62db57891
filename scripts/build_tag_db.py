"""Build the bundled tag database (src/tipo/data/tags.zlib) from the reference wheel.

The tag lists come from tipo-kgen 0.3.1 (KohakuBlueleaf/KGen, Apache-2.0): kgen/tag-list/
{artist,characters,copyrights,meta}.txt. Run from the repository root:

    pip download --no-deps tipo-kgen==0.3.1 -d /tmp/kgen
    python scripts/build_tag_db.py /tmp/kgen/tipo_kgen-0.3.1-py3-none-any.whl

The output is deterministic: the same wheel gives the same bytes.
"""

from __future__ import annotations

import argparse
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
# sha256 of tipo_kgen-0.3.1-py3-none-any.whl as published on PyPI.
WHEEL_SHA256 = "b284ba7fddd4a0e512f1f112ffdc5ada7027cd5dde65e58ba77e1ba5501d752d"


def read_lists(wheel: Path) -> dict[Category, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        return {
            category: archive.read(f"kgen/tag-list/{name}").decode("utf-8").splitlines()
            for category, name in LISTS.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="tipo_kgen-0.3.1-py3-none-any.whl")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src" / "tipo" / "data" / DATABASE_RESOURCE,
    )
    args = parser.parse_args()
    digest = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{args.wheel}: sha256 {digest} is not tipo-kgen 0.3.1's {WHEEL_SHA256}")
    lists = read_lists(args.wheel)
    blob = encode_database(lists)
    args.out.write_bytes(blob)
    counts = ", ".join(f"{c.value} {len(v)}" for c, v in lists.items())
    print(f"wrote {args.out} ({len(blob) / 1e6:.2f} MB): {counts}")


if __name__ == "__main__":
    main()
