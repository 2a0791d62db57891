"""tipo eval without images: prompt sets, config, caching and resume, text metrics, statistics,
the report, and a whole text-only run on the noise backend (the pipeline at no model cost)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from checkpoints import llama_tokenizer_model
from eval_data import coyo_rows, danbooru_rows, write_jsonl
from tipo.cli import main
from tipo.data.records import TrainingRecord
from tipo.errors import InvalidRequestError
from tipo.eval import runner
from tipo.eval.cache import JsonlStore, cache_key
from tipo.eval.config import load_config
from tipo.eval.evaluate import run_eval
from tipo.eval.expanders import TipoExpander, make_expander
from tipo.eval.prompts import (
    build_prompt_set,
    first_sentences,
    scenery_prompt,
    stable_seed,
    strip_repeated_suffix,
)
from tipo.eval.report import markdown
from tipo.eval.stats import mean_estimate, set_estimate
from tipo.eval.text_metrics import split_prompt, tag_metrics
from tipo.tags import TagDatabase

# --- prompt sets ----------------------------------------------------------------------------


def test_scenery_keeps_non_general_tags_within_the_papers_caps() -> None:
    record = TrainingRecord.from_row(
        {
            "general": ["scenery", "sky", "tree"],
            "artist": [f"a{i}" for i in range(8)],
            "character": ["hatsune_miku"],
            "copyright": ["vocaloid"],
            "meta": [f"m{i}" for i in range(12)],
            "special": ["no humans"],
            "rating": "general",
            "quality": "masterpiece",
        }
    )
    tags = scenery_prompt(record)
    assert tags is not None
    assert tags[0] == "no humans" and tags[-1] == "scenery"
    assert [t for t in tags if t.startswith("a") and t[1:].isdigit()] == [f"a{i}" for i in range(5)]
    assert sum(t.startswith("m") and t[1:].isdigit() for t in tags) == 10
    assert {"hatsune miku", "vocaloid", "general", "masterpiece"} <= set(tags)
    assert not {"sky", "tree"} & set(tags)  # general tags other than scenery are dropped
    no_scenery = TrainingRecord.from_row({"general": ["sky"], "artist": ["a"]})
    assert scenery_prompt(no_scenery) is None


def test_truncated_long_is_the_first_two_sentences_without_a_looping_tail() -> None:
    looping = "A house on a hill. The sky is blue! Trees stand. A cloud. A cloud. A cloud."
    assert (
        strip_repeated_suffix(looping)
        == "A house on a hill. The sky is blue! Trees stand. A cloud."
    )
    assert first_sentences(looping) == "A house on a hill. The sky is blue!"
    assert strip_repeated_suffix("no repeat here") == "no repeat here"


def test_prompt_sets_are_a_fixed_seed_sample(tmp_path: Path) -> None:
    records = [TrainingRecord.from_row(row) for row in danbooru_rows(24)]
    first = build_prompt_set(records, "scenery", size=5, seed=3)
    assert first == build_prompt_set(records, "scenery", size=5, seed=3)
    assert first != build_prompt_set(records, "scenery", size=5, seed=4)
    assert len(first) == 5 and len({p.id for p in first}) == 5
    assert all(p.seed == stable_seed(3, "scenery", int(p.id)) for p in first)
    assert [int(p.id) for p in first] == sorted(int(p.id) for p in first)
    with pytest.raises(InvalidRequestError, match="no rows for the short test"):
        build_prompt_set(records, "short", size=2)
    with pytest.raises(InvalidRequestError, match="unknown test"):
        build_prompt_set(records, "long", size=2)  # type: ignore[arg-type]


# --- cache, config --------------------------------------------------------------------------


def test_a_store_torn_by_an_interrupt_loses_only_the_torn_line(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path / "s.jsonl")
    store.put_many([("a", 1), ("b", [1.5, 2.0])])
    with (tmp_path / "s.jsonl").open("a") as handle:
        handle.write('{"key": "c", "val')  # killed mid-write
    reopened = JsonlStore(tmp_path / "s.jsonl")
    assert reopened.get("a") == 1 and reopened.get("b") == [1.5, 2.0] and "c" not in reopened
    reopened.put_many([("d", "x")])
    assert JsonlStore(tmp_path / "s.jsonl").get("d") == "x"
    assert cache_key({"x": 1, "y": 2}) == cache_key({"y": 2, "x": 1})


def write_config(folder: Path, text: str) -> Path:
    path = folder / "eval.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_papers_example_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[1] / "examples" / "eval-paper.toml")
    assert [t.kind for t in config.tests] == ["scenery", "short", "truncated_long"]
    assert {kind for kind in (e.get("kind", n) for n, e in config.expanders.items())} == {
        "original",
        "tipo",
        "promptist",
        "magicprompt",
        "openai",
        "tipo-kgen",
    }
    assert config.images is not None and config.images["steps"] == 16


def test_config_errors_name_the_fix(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", danbooru_rows(4))
    cases = {
        "[tests.a]\ndata = 'd.jsonl'\n[expanders.o]\n[extra]\n": "unknown section",
        "[tests.a]\nkind = 'scenery'\n[expanders.o]\n": "needs data",
        "[tests.a]\ndata = 'd.jsonl'\nsiz = 3\n[expanders.o]\n": "unknown key",
        "[tests.a]\nkind = 'poem'\ndata = 'd.jsonl'\n[expanders.o]\n": "unknown kind",
        "[tests.scenery]\ndata = 'd.jsonl'\n": "at least one",
        "[tests.short]\ndata = 'd.jsonl'\n[expanders.o]\n[metrics]\nimage = ['fid']\n": "image",
        "[tests.short]\ndata = 'd.jsonl'\n[expanders.o]\n[images]\nstep = 3\n": "unknown key",
        "[tests.short]\ndata = 'd.jsonl'\n[expanders.o]\n[images]\nwidth = 100\n": "multiple of 8",
    }
    for text, message in cases.items():
        with pytest.raises(InvalidRequestError, match=message):
            load_config(write_config(tmp_path, text))
    config = load_config(
        write_config(tmp_path, "[tests.scenery]\ndata = 'd.jsonl'\n[expanders.original]\n")
    )
    assert config.tests[0].data == str(tmp_path / "d.jsonl")  # relative to the config file
    assert config.output == tmp_path / "eval-run"
    with pytest.raises(InvalidRequestError, match="unknown kind 'gpt5'"):
        make_expander("x", {"kind": "gpt5"})
    with pytest.raises(InvalidRequestError, match="unknown option"):
        make_expander("t", {"kind": "tipo", "options": {"tag_lenght": "long"}})


# --- text metrics and statistics ------------------------------------------------------------


def test_split_prompt_reads_tags_and_prose_from_any_expander() -> None:
    tipo = "1girl, (blue sky:1.2), <lora:x:0.5>, long_hair\n\nA girl stands on a hill, smiling."
    assert split_prompt(tipo).tags == ("1girl", "blue sky", "long_hair")
    assert split_prompt(tipo).prose == ("A girl stands on a hill, smiling.",)
    promptist = "a painting of a castle on a hill at dawn, trending on artstation, highly detailed"
    assert len(split_prompt(promptist).tags) == 3
    assert split_prompt("It rains. The street shines.").tags == ()


def test_tag_metrics_count_known_duplicate_and_target_hits() -> None:
    db = TagDatabase.bundled()
    general = [n for n, _ in zip(_general(db), range(40), strict=False)]
    text = ", ".join(["scenery", "long hair", "long_hair", "zzqx not a tag", *general])
    values = tag_metrics([text, "A lone sentence."], db, "long")
    unique = len(set(["scenery", "long hair", "zzqx not a tag", *general]))
    assert values["tags"] == [unique, 0.0]
    assert values["duplicate_tags"] == [1.0, 0.0]  # long_hair is long hair written again
    assert values["known_tags"][0] == pytest.approx((unique - 1) / unique)
    assert math.isnan(values["known_tags"][1])
    assert values["tag_length_hit"] == [float(36 <= unique <= 54), 0.0]


def _general(db: TagDatabase) -> list[str]:
    from tipo.tags import Category

    plain = [n for n in db.names(Category.GENERAL) if n.replace(" ", "").isalpha()]
    return [n for n in plain if n not in ("scenery", "long hair")][::500]


def test_bootstrap_intervals_bracket_the_estimate() -> None:
    values = [0.0, 1.0] * 50 + [float("nan")]
    estimate = mean_estimate(values, resamples=2000, seed=1)
    assert estimate.value == 0.5 and estimate.n == 100
    assert estimate.low is not None and estimate.high is not None
    assert estimate.low < 0.5 < estimate.high
    # the 95% interval of a mean of 100 fair coins: +-1.96 * 0.05, within resampling noise
    assert estimate.high - estimate.low == pytest.approx(2 * 1.96 * 0.05, rel=0.1)
    assert mean_estimate([2.0, 4.0], resamples=0).low is None
    data = np.arange(10.0)
    whole = set_estimate(lambda rows: float(data[rows].max()), 10, resamples=200, seed=0)
    assert whole.value == 9.0 and whole.high == 9.0 and whole.low is not None and whole.low <= 9.0


# --- a whole text-only run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eval_tiny_text import make_tiny_sentence_transformer

    folder = tmp_path_factory.mktemp("eval-text")
    write_jsonl(folder / "danbooru.jsonl", danbooru_rows(24))
    write_jsonl(folder / "coyo.jsonl", coyo_rows(16))
    embedder = make_tiny_sentence_transformer(folder / "models")
    return write_config(
        folder,
        f"""
[run]
output = "run"
[tests.scenery]
data = "danbooru.jsonl"
size = 6
[tests.tlong]
kind = "truncated_long"
data = "coyo.jsonl"
size = 4
[expanders.original]
[expanders.tipo-noise]
kind = "tipo"
backend = "noise"
model = "{llama_tokenizer_model()}"
options = {{ tag_length = "short", nl_length = "short" }}
[metrics]
text_embedding = "{embedder}"
bootstrap = 200
""",
    )


def test_text_only_run_reports_every_text_metric(
    text_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "run", str(text_config), "--quiet"]) == 0
    out = capsys.readouterr().out
    run = text_config.parent / "run"
    document = json.loads((run / "results.json").read_text())
    assert document["schema"] == "tipo-eval/1" and out.startswith("# TIPO evaluation")
    scenery = document["tests"]["scenery"]
    assert scenery["prompts"] == 6 and set(scenery["expanders"]) == {"original", "tipo-noise"}
    metrics = scenery["expanders"]["tipo-noise"]["metrics"]
    assert set(metrics) == {
        "tags",
        "tag_length_hit",
        "known_tags",
        "duplicate_tags",
        "faithfulness",
        "text_diversity",
    }
    # the vocabulary constraint: the noise model adds only database tags, and no duplicates;
    # the unknown tags are the test data's made-up artists, given in the input
    assert 0.8 < metrics["known_tags"]["value"] < 1.0 and metrics["duplicate_tags"]["value"] == 0.0
    db = TagDatabase.bundled()
    for line in (run / "expansions/scenery/tipo-noise.jsonl").read_text().splitlines():
        row = json.loads(line)
        unknown = {t for t in split_prompt(row["output"]).tags if not db.is_known(t)}
        assert unknown <= set(split_prompt(row["input"]).tags)
    original = scenery["expanders"]["original"]["metrics"]
    assert original["faithfulness"]["value"] == pytest.approx(1.0)  # itself
    assert metrics["tags"]["value"] > original["tags"]["value"]  # the expansion added tags
    rows = [
        json.loads(line)
        for line in (run / "expansions/tlong/tipo-noise.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 4 and all(r["output"] != r["input"] for r in rows)
    assert (run / "plots/scenery-metrics.png").stat().st_size > 1000
    assert "| original |" in out and "scenery known tags ↑" in out


def test_an_interrupted_run_resumes_with_only_what_is_missing(
    text_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(text_config)
    config = type(config)(**{**config.__dict__, "output": tmp_path / "run"})
    monkeypatch.setattr(runner, "EXPAND_CHUNK", 2)
    expanded: list[str] = []
    real_expand = TipoExpander.expand

    def interrupted(self: TipoExpander, prompts: list) -> list[str]:  # type: ignore[type-arg]
        if len(expanded) >= 4:
            raise KeyboardInterrupt
        expanded.extend(p.key for p in prompts)
        return real_expand(self, prompts)

    monkeypatch.setattr(TipoExpander, "expand", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config, progress=False)
    assert len(JsonlStore(tmp_path / "run/cache/expansions.jsonl")) == 4 + 10  # + original's
    first = list(expanded)
    expanded.clear()
    monkeypatch.setattr(
        TipoExpander,
        "expand",
        lambda self, prompts: (expanded.extend(p.key for p in prompts), real_expand(self, prompts))[
            1
        ],
    )
    document = run_eval(config, progress=False)
    assert len(expanded) == 10 - 4 and not set(expanded) & set(first)
    again = run_eval(config, progress=False)  # nothing left to do: same results
    assert len(expanded) == 6
    assert again["tests"] == document["tests"]


def test_a_checkpoint_written_again_is_not_served_from_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"1234")
    expander = TipoExpander("t", model=str(folder))
    before = expander.settings()
    (folder / "model.safetensors").write_bytes(b"123456")  # retrained into the same folder
    assert expander.settings()["weights"] != before["weights"]
    assert TipoExpander("t", model="KBlueLeaf/TIPO-200M-ft").settings()["weights"] is None


def test_the_report_marks_the_best_value_per_column() -> None:
    def metric(value: float) -> dict[str, object]:
        return {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 3}

    document = {
        "created": "now",
        "tests": {
            "scenery": {
                "prompts": 3,
                "expanders": {
                    "a": {"metrics": {"fdd": metric(0.2), "aesthetic": metric(6.0)}},
                    "b": {"metrics": {"fdd": metric(0.3), "aesthetic": metric(6.5)}},
                },
            }
        },
    }
    text = markdown(document)
    assert "| a | **0.2** [0.1, 0.3] | 6 [5.9, 6.1] |" in text
    assert "| b | 0.3 [0.2, 0.4] | **6.5** [6.4, 6.6] |" in text
