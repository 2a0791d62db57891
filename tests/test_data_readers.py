"""Reading the datasets people have (a kohya-style image folder, JSON Lines, Parquet) into
training records, and `tipo data preview` / `tipo data stats` on them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tipo.cli import main
from tipo.data.readers import image_size, read_records
from tipo.errors import InvalidRequestError
from tipo.protocol import parse_output
from training_data import write_png


@pytest.fixture
def kohya_folder(tmp_path: Path) -> Path:
    """The sd-scripts layout: <repeats>_<name>/ folders of images with .txt tag files."""
    folder = tmp_path / "train" / "10_miku"
    folder.mkdir(parents=True)
    write_png(folder / "a.png", 48, 64)
    (folder / "a.txt").write_text("1girl, hatsune miku, long_hair, smile, masterpiece, general\n")
    (folder / "a.caption").write_text("A girl with long teal twintails smiles.")
    write_png(folder / "b.png", 64, 32)
    (folder / "b.txt").write_text("scenery, no humans, sky, cloud")
    write_png(folder / "untagged.png", 8, 8)  # no tag file: not a training sample
    return tmp_path / "train"


def test_a_kohya_folder_gives_tags_by_category_size_and_caption(kohya_folder: Path) -> None:
    records = list(read_records(kohya_folder))
    assert len(records) == 2
    first, second = records
    assert first.special == ("1girl",) and first.characters == ("hatsune miku",)
    assert first.general == ("long hair", "smile")
    assert first.quality == "masterpiece" and first.rating == "general"
    assert (first.width, first.height) == (48, 64)
    assert first.caption("pixtral_caption") == "A girl with long teal twintails smiles."
    assert second.general == ("scenery", "no humans", "sky", "cloud")
    assert second.captions == {} and (second.width, second.height) == (64, 32)


def test_image_sizes_come_from_png_jpeg_and_webp_headers(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", 640, 480)
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 1216, 832, 1) + b"\x01\x11\x00"
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8" + app0 + sof + b"\xff\xd9")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    vp8x += (1023).to_bytes(3, "little") + (767).to_bytes(3, "little")
    (tmp_path / "x.webp").write_bytes(b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x)
    (tmp_path / "x.bmp").write_bytes(b"BM" + b"\x00" * 60)
    assert image_size(tmp_path / "x.png") == (640, 480)
    assert image_size(tmp_path / "x.jpg") == (832, 1216)
    assert image_size(tmp_path / "x.webp") == (1024, 768)
    assert image_size(tmp_path / "x.bmp") is None


ROWS = [
    {"general": "long_hair smile outdoors", "special": ["1girl"], "rating": "general",
     "artist": "somebody", "width": 832, "height": 1216, "florence_short": "A girl outside."},
    {"caption_llava": "A dog on the grass.", "caption_llava_short": "A dog.",
     "tags_open_images": "['Dog', 'Grass']", "tags_booru": "['outdoors']"},
    {"original_caption": "a photo", "short_caption": "A photo.", "detail_caption": "A photo."},
]  # fmt: skip


def test_jsonl_rows_are_routed_by_source(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n\n")
    records = list(read_records(path))
    assert [r.source for r in records] == ["danbooru", "coyo", "gbc"]
    assert records[0].general == ("long hair", "smile", "outdoors")
    assert records[1].general == ("dog", "grass", "outdoors")


def test_a_bad_jsonl_line_names_its_number(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(InvalidRequestError, match=r"rows\.jsonl:2"):
        list(read_records(path))


def test_parquet_is_read_through_datasets(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "danbooru.parquet"
    rows = [{"general": "long_hair blue_sky", "rating": "general", "width": 100, "height": 200}] * 3
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = list(read_records(path))
    assert len(records) == 3 and records[0].general == ("long hair", "blue sky")
    assert (records[0].width, records[0].height) == (100, 200)


def test_tipo_data_preview_and_stats(
    kohya_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "preview", str(kohya_folder), "-n", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("=== sample ") if b]
    assert len(blocks) == 2 and blocks[0].startswith("0: danbooru")
    for block in blocks:
        text = block.split("===\n", 1)[1].replace("\u2502", "")
        assert "target:" in text
        assert parse_output(text.rstrip("\n")).tags or parse_output(text.rstrip("\n")).long
    assert main(["data", "stats", str(kohya_folder)]) == 0
    table = capsys.readouterr().out
    assert "train_on_input" in table and "task" in table


def test_an_unreadable_dataset_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["data", "preview", str(tmp_path / "notes.txt")]) == 2
    assert "kohya image folder" in capsys.readouterr().err
