"""Against a real SD-WebUI (AUTOMATIC1111) or Forge checkout: opt-in, for people who have one.

Set ``A1111_DIR`` and/or ``FORGE_DIR`` to a checkout whose environment is already prepared
(it has run ``webui.sh`` once). Skipped otherwise, and in CI: a WebUI's launcher clones GitHub
repositories, which these machines cannot reach (tests/webui_contract/README.md). Not run on
the project's machines, so it checks only what the WebUI's HTTP API shows for sure.

The test links this repository into ``extensions/`` (and removes the link afterwards), starts
the WebUI with its API on a free loopback port, and checks: the TIPO script is listed, its
arguments carry the reference's labels in the reference's order, and, when the WebUI has a
checkpoint, a tiny txt2img call with ``alwayson_scripts["TIPO"]`` writes the TIPO infotext.
Models: a TIPO model must be in the checkout's ``models/kgen`` for the txt2img part.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_cache import free_port

REPOSITORY = Path(__file__).resolve().parents[1]
LABELS = ["TIPO", "Upsampling timing", "Seed for upsampling tags", "Tags Length target",
          "NL Length target", "Ban tags", "Prompt Format", "Custom Prompt Format", "Temperature",
          "Top-p", "Top-k", "Model", "Use CPU (GGUF)", "No formatting", "Tag Prompt",
          "Natural Language Prompt"]  # fmt: skip
CHECKOUTS = [(name, os.environ.get(name)) for name in ("A1111_DIR", "FORGE_DIR")]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=600) as answer:
        return json.load(answer)


@pytest.fixture(scope="module", params=CHECKOUTS, ids=[name for name, _ in CHECKOUTS])
def webui(request, tmp_path_factory) -> Iterator[str]:
    name, checkout = request.param
    if not checkout:
        pytest.skip(f"set {name} to a prepared checkout to run against a real WebUI")
    root = Path(checkout)
    link = root / "extensions" / "tipo-prompt-under-test"
    link.symlink_to(REPOSITORY, target_is_directory=True)
    port = free_port()
    log = (tmp_path_factory.mktemp("webui") / "webui.log").open("wb")
    command = [str(root / "venv" / "bin" / "python"), "launch.py", "--skip-prepare-environment",
               "--api", "--port", str(port), "--use-cpu", "all", "--no-half",
               "--skip-torch-cuda-test"]  # fmt: skip
    process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        link.unlink()
        log.close()


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the WebUI exited with {process.returncode}; see its log")
        try:
            _get(f"{url}/sdapi/v1/scripts")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(3)
    raise TimeoutError(f"the WebUI did not answer within {timeout:.0f} s")


def test_script_is_listed_with_the_reference_arguments(webui):
    scripts = _get(f"{webui}/sdapi/v1/scripts")
    assert "tipo" in scripts["txt2img"] and "tipo" in scripts["img2img"]
    info = next(s for s in _get(f"{webui}/sdapi/v1/script-info")
                if s["name"] == "tipo" and not s["is_img2img"])  # fmt: skip
    assert [arg["label"] for arg in info["args"]] == LABELS


def test_txt2img_with_tipo_writes_its_infotext(webui):
    if not _get(f"{webui}/sdapi/v1/sd-models"):
        pytest.skip("the WebUI has no checkpoint to generate with")
    args = [True, "After applying other prompt processings", 1234, "short", "short", "",
            "Both, tag first (recommend)", "", 0.5, 0.95, 80,
            "KBlueLeaf/TIPO-200M-ft2 | TIPO-200M-ft2-F16.gguf", True, False, "", ""]  # fmt: skip
    answer = _post(f"{webui}/sdapi/v1/txt2img", {
        "prompt": "1girl, scenery", "steps": 1, "width": 64, "height": 64,
        "alwayson_scripts": {"TIPO": {"args": args}}})  # fmt: skip
    info = json.loads(answer["info"])
    assert "TIPO Parameters" in info["infotexts"][0]
    assert info["prompt"] != "1girl, scenery" and info["prompt"].startswith("1girl")
