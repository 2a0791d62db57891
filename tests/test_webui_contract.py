"""scripts/tipo.py driven through the SD-WebUI contract harness (tests/webui_contract: a
stand-in written from the WebUI's documented script API, NOT AUTOMATIC1111 or Forge): the
hooks in the WebUI's order, the fields of ``p``, infotexts written and pasted back, API
arguments, and Forge's hires-on-current-image path. test_webui_gradio.py builds the controls
with real gradio."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "webui_contract"))

from harness import load_script

from tipo import TIPO
from tipo.backends.fake import ScriptedBackend
from tipo.errors import ModelNotFoundError
from tipo.hosts import webui
from tipo.hosts.models import HostRuntime, ModelCache

MODEL = "KBlueLeaf/TIPO-500M-ft"  # a folder TIPO-500M-ft in models/kgen
PROMPT = "1girl, (blue sky:1.2), BREAK, scenery, <lora:foo:0.7>"


@pytest.fixture(scope="module")
def script_module(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("webui-models")
    shutil.copytree(tiny_checkpoint, root / "kgen" / "TIPO-500M-ft")
    module = load_script(root)
    yield module
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        del sys.modules[name]


class CountingBackend(ScriptedBackend):
    """The scripted backend, recording the size of every batch it is sent."""

    batches: list[int]

    def generate(self, requests, on_token=None):
        self.batches.append(len(requests))
        return super().generate(requests, on_token)


@pytest.fixture
def batches(script_module, monkeypatch) -> list[int]:
    """Runs the script's models on the counting scripted backend; yields its batch sizes."""
    sizes: list[int] = []

    def load(checkpoint, **options):
        tokenizer = checkpoint.load_tokenizer()
        backend = CountingBackend(tokenizer)
        backend.batches = sizes
        return TIPO(backend, tokenizer)

    runtime = HostRuntime(script_module.model_folders, cache=ModelCache(load), offline=True)
    monkeypatch.setattr(script_module.TIPOScript, "runtime", runtime)
    return sizes


def script_args(**changes) -> tuple:
    """The 16 positional arguments, as ui() returns them and API callers send them."""
    settings = webui.ScriptArgs(enabled=True, model=MODEL, seed=7, tag_length="short",
                                nl_length="very short")  # fmt: skip
    values = {**settings.__dict__, **changes}
    return tuple(values[name] for name in webui.ScriptArgs.__dataclass_fields__)


def generate(module, args, **fields):
    from modules.processing import StableDiffusionProcessingTxt2Img, process_images

    script = module.TIPOScript()
    p = StableDiffusionProcessingTxt2Img(scripts=[(script, args)], **fields)
    return p, process_images(p)


@dataclass
class Image:
    info: dict = field(default_factory=dict)


def test_script_keeps_the_reference_identity(script_module):
    script = script_module.TIPOScript()
    from modules import scripts

    assert script.title() == "TIPO"
    assert (
        script.show(False) is scripts.AlwaysVisible and script.show(True) is scripts.AlwaysVisible
    )
    assert Path(script_module.__file__).as_posix().endswith("scripts/tipo.py")  # ui-config keys


def test_after_expands_every_image_in_one_batch(script_module, batches):
    p, done = generate(script_module, script_args(), prompt=PROMPT, styles=["quality"],
                       batch_size=2, n_iter=2, seed=100, enable_hr=True)  # fmt: skip
    assert len(done.prompts) == 4 and len(set(done.prompts)) == 4
    for prompt in done.prompts:
        assert "(blue sky:1.2)" in prompt and "<lora:foo:0.7>" in prompt and "BREAK" in prompt
        assert "masterpiece" in prompt  # styles came first: TIPO saw them as tags
    assert set(batches) == {4}  # every step of the four images went to the model together
    assert done.hr_prompts == done.prompts
    seed = json.loads(p.extra_generation_params[webui.INFOTEXT_PARAMETERS]
                      .translate(webui.QUOTESWAP))["seed"]  # fmt: skip
    assert seed == 7
    settings = webui.ScriptArgs.from_args(script_args())
    again = webui.expand_prompts(
        script_module.TIPOScript.runtime,
        settings,
        ["1girl, (blue sky:1.2), BREAK, scenery, <lora:foo:0.7>, masterpiece, best quality"],
        [7 + 102],
        (1024, 1024),
    )
    assert again == [done.prompts[2]]  # image seed 102 -> TIPO seed 7 + 102  # fmt: skip


def test_a_hires_prompt_set_apart_is_kept(script_module, batches):
    _, done = generate(script_module, script_args(), prompt=PROMPT, batch_size=2, seed=1,
                       enable_hr=True, hr_prompt="a different hires prompt")  # fmt: skip
    assert done.hr_prompts == ["a different hires prompt"] * 2
    assert all(p.startswith("1girl,") for p in done.prompts)


def test_before_expands_once_before_styles_with_the_fixed_seed(script_module, batches):
    args = script_args(timing=webui.TIMING_BEFORE)
    p, done = generate(script_module, args, prompt=PROMPT, styles=["signature"],
                       batch_size=3, seed=-1)  # fmt: skip
    assert len(set(done.prompts)) == 1 and done.prompts[0].endswith(", signed")
    assert batches == [1] * len(batches)
    assert p.seed != -1  # fixed before TIPO used it (reference #105)
    expected = webui.expand_prompts(script_module.TIPOScript.runtime,
                                    webui.ScriptArgs.from_args(args), [PROMPT], [7 + p.seed],
                                    (1024, 1024))  # fmt: skip
    assert done.prompts[0] == f"{expected[0]}, signed"


def test_disabled_changes_nothing(script_module, batches):
    p, done = generate(script_module, script_args(enabled=False), prompt=PROMPT, batch_size=2)
    assert done.prompts == [PROMPT, PROMPT] and not batches
    assert webui.INFOTEXT_PARAMETERS not in p.extra_generation_params


def test_random_seed_is_recorded_and_reproduces(script_module, batches):
    from modules.infotext_utils import parse_generation_parameters

    _, first = generate(script_module, script_args(seed=-1), prompt=PROMPT, seed=5)
    pasted = webui.pasted_values(parse_generation_parameters(first.infotexts[0]))
    values = webui.ScriptArgs(**{**webui.ScriptArgs.from_args(script_args()).__dict__, **pasted})
    _, again = generate(script_module, script_args(**values.__dict__), prompt=PROMPT, seed=5)
    assert again.prompts == first.prompts


def test_infotext_pastes_back_into_every_control(script_module, batches):
    from modules.infotext_utils import parse_generation_parameters

    args = script_args(ban_tags="text, .*logo", format_selected="custom",
                       format_text="<|general|>, <|extended|>", gguf_cpu=True,
                       no_formatting=False, nl_prompt="a girl on a hill")  # fmt: skip
    _, done = generate(script_module, args, prompt=PROMPT, seed=3)
    pasted = webui.pasted_values(parse_generation_parameters(done.infotexts[0]))
    settings = webui.ScriptArgs.from_args(args)
    assert pasted == {**settings.__dict__, "tag_prompt": PROMPT}


def test_an_image_made_without_tipo_pastes_with_tipo_off():
    assert webui.pasted_values({"Prompt": "1girl", "Steps": "20"}) == {"enabled": False}


def test_a_reference_infotext_pastes_back(script_module):
    """As the reference wrote it: parameters with ' and " swapped, and "TIPO format" holding
    the dropdown's name (its bug); the format text comes from the parameters."""
    from modules.infotext_utils import parse_generation_parameters

    parameters = {"seed": 1234, "timing": "AFTER", "tag_length": "very long",
                  "nl_length": "short", "ban_tags": "text", "format_selected":
                  "Both, NL first (recommend)", "format": "<|extended|>.\n\n<|general|>",
                  "temperature": 0.5, "top_p": 0.95, "top_k": 80,
                  "model": "KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf",
                  "gguf_cpu": True, "no_formatting": False}  # fmt: skip
    line = ", ".join([
        "Steps: 20", "Seed: 1",
        "TIPO Parameters: " + json.dumps(json.dumps(parameters).translate(webui.QUOTESWAP)),
        'TIPO prompt: "1girl, scenery"', "TIPO nl prompt: a girl",
        'TIPO format: "Both, NL first (recommend)"'])  # fmt: skip
    pasted = webui.pasted_values(parse_generation_parameters(f"1girl, long prompt\n{line}"))
    assert pasted["format_selected"] == "Both, NL first (recommend)"
    assert pasted["format_text"] == "<|extended|>.\n\n<|general|>"
    assert pasted["timing"] == webui.TIMING_AFTER and pasted["tag_length"] == "very long"
    assert (pasted["tag_prompt"], pasted["nl_prompt"]) == ("1girl, scenery", "a girl")
    assert pasted["model"] == parameters["model"] and pasted["seed"] == 1234


def test_api_callers_may_send_the_reference_values_and_fewer_args(script_module, batches):
    args = script_args(tag_length="very long", format_selected="Both, NL first (recommend)")
    _, done = generate(script_module, args, prompt=PROMPT)
    assert done.prompts[0].startswith("1girl,")
    short = (True, webui.TIMING_AFTER, 11, "short", "short", "")  # the first six only
    with pytest.raises(ModelNotFoundError):  # the default model is not in models/kgen
        generate(script_module, short, prompt=PROMPT)
    assert webui.ScriptArgs.from_args(short).model == webui.ScriptArgs().model


def test_forge_hires_on_current_image_reuses_the_images_prompt(script_module, batches):
    """Reference #62: Forge's button re-ran the prompt box; TIPO with seed -1 then wrote a
    new prompt. The image's infotext says which prompt made it."""
    _, first = generate(script_module, script_args(seed=-1), prompt=PROMPT, seed=40)
    calls = len(batches)
    _, done = generate(script_module, script_args(seed=-1), prompt=PROMPT, seed=40,
                       enable_hr=True, txt2img_upscale=True,
                       firstpass_image=Image({"parameters": first.infotexts[0]}))  # fmt: skip
    assert done.prompts == first.prompts and done.hr_prompts == first.prompts
    assert len(batches) == calls  # nothing was generated again


def test_generate_prompt_button_expands_the_tag_box(script_module, batches):
    script = script_module.TIPOScript()
    prompt = script.generate_prompt(*script_args(tag_prompt="1girl, (red eyes:1.1)"), 832, 1216)
    assert prompt.startswith("1girl,") and "(red eyes:1.1)" in prompt
    assert script.last_seed == 7


def test_a_missing_model_stops_the_generation_with_where_to_put_it(script_module, batches):
    args = script_args(model="KBlueLeaf/TIPO-100M | TIPO-100M-F16.gguf")
    with pytest.raises(ModelNotFoundError) as error:
        generate(script_module, args, prompt=PROMPT)
    assert "kgen" in error.value.hint and "TIPO-100M-F16.gguf" in error.value.hint


def test_the_real_engine_runs_behind_the_script(script_module, one_torch_thread):
    _, done = generate(script_module, script_args(), prompt=PROMPT, batch_size=2, seed=9)
    assert len(done.prompts) == 2 and all(p.startswith("1girl,") for p in done.prompts)
