"""Small dataset files for the evaluation tests: Danbooru metadata rows (some tagged scenery)
and Coyo-HD caption rows, in the columns of the TIPO training sets (tipo.data.records)."""

from __future__ import annotations

import json
from pathlib import Path

GENERAL = [
    "scenery",
    "outdoors",
    "sky",
    "cloud",
    "tree",
    "grass",
    "mountain",
    "water",
    "1girl",
    "solo",
    "long hair",
    "smile",
    "building",
    "night",
    "star (sky)",
]


def danbooru_rows(count: int = 24) -> list[dict[str, object]]:
    rows = []
    for i in range(count):
        general = GENERAL[(i % 5) :: 2] + (["scenery"] if i % 3 != 1 else [])
        rows.append(
            {
                "general": list(dict.fromkeys(general)),
                "artist": [f"artist_{i}", f"artist_{i + 1}"],
                "character": [] if i % 2 else ["hatsune_miku"],
                "copyright": ["vocaloid"] if i % 2 == 0 else ["original"],
                "meta": ["highres", "absurdres"][: 1 + i % 2],
                "special": [] if i % 4 else ["no humans"],
                "rating": ["general", "sensitive"][i % 2],
                "quality": "masterpiece" if i % 2 else "best quality",
                "width": 1024,
                "height": 768,
            }
        )
    return rows


def coyo_rows(count: int = 16) -> list[dict[str, object]]:
    scenes = [
        "a red house on a hill",
        "a river through a field of flowers",
        "a city street at night",
        "mountains under a blue sky",
    ]
    rows = []
    for i in range(count):
        scene = scenes[i % len(scenes)]
        long = (
            f"The image shows {scene}. The light is soft and warm. Trees stand in the "
            f"distance. A cloud drifts by. " + "A cloud drifts by. " * (i % 3)
        )
        rows.append(
            {
                "caption_llava_short": f"{scene.capitalize()} number {i}.",
                "caption_llava": long.strip(),
                "tags_open_images": "['house', 'sky']",
                "tags_booru": "['outdoors', 'scenery']",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
