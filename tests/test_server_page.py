"""The page of ``tipo serve`` in a real browser: a real server on the tiny checkpoint as a
subprocess, Debian's Chromium driven by Playwright (its own browser download does not work
here), the page under the server's Content-Security-Policy.

Every test fails on a console error, an uncaught exception, a CSP violation or a request to
another host. Set ``TIPO_SCREENSHOT_DIR`` to a folder to keep the README's screenshot
(``TIPO_SCREENSHOT_DIR=docs/images``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from host_cache import free_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_DIR = os.environ.get("TIPO_SCREENSHOT_DIR")
STARTUP_TIMEOUT_S = 120
RESULT_TIMEOUT_MS = 120_000

# Before any page script: collect CSP violations (the console shows them too, but this also
# sees violations from attributes and catches a page that logs nothing).
WATCH_CSP_JS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
ALL_CARDS_FINISHED_JS = """
() => {
  const cards = [...document.querySelectorAll("#cards .card")];
  const error = document.getElementById("error").textContent;
  return error || (cards.length && cards.every((c) => c.dataset.state !== "streaming"));
}
"""


# ---- the server -----------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON) of a GET, or of a POST when ``body`` is given."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint under the name the page shows (and the screenshot)."""
    linked = tmp_path_factory.mktemp("models") / "TIPO-tiny-random"
    linked.symlink_to(tiny_checkpoint, target_is_directory=True)
    return linked


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # float32: its tokens do not depend on what the prefix cache holds (int8's do: README,
    # HTTP service), so a seed picked for its behaviour (a rollback) keeps it whatever the
    # tests before it asked.
    folder = tmp_path_factory.mktemp("tipo-serve")
    with run_server(model, folder, "--dtype", "float32") as running:
        yield running


@contextlib.contextmanager
def run_server(model: Path, folder: Path, *flags: str) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "tipo.cli", "serve", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), *flags]
    # No TIPO_* settings from the developer's shell (an API key would lock the page out).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPO_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_healthy(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"tipo serve exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if server.api("/health") == (200, {"status": "ok"}):
                return
        except (OSError, ValueError):
            pass  # not listening yet
        time.sleep(0.3)
    pytest.fail(f"tipo serve was not healthy after {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")


# ---- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page of the app and everything that went wrong in it."""

    page: Any
    server: Server
    problems: list[str] = field(default_factory=list)

    def open(self) -> Any:
        response = self.page.goto(self.server.url + "/")
        self.page.wait_for_selector("body[data-ready]")
        return response

    def fill(self, **values: Any) -> None:
        """Set form fields by name; ``more=True`` opens the "More" section first."""
        if values.pop("more", False) and not self.page.locator("#more").get_attribute("open"):
            self.page.click("#more > summary")
        for name, value in values.items():
            target = self.page.locator(f"#{name}")
            if isinstance(value, bool):
                target.set_checked(value)
            elif target.evaluate("e => e.tagName") == "SELECT":
                target.select_option(value)
            else:
                target.fill(str(value))

    def expand(self, key: str | None = None) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
        """Press Expand (or ``key``); once every card has finished, return the JSON body the
        page sent and the events it received."""
        with self.page.expect_response("**/v1/expand") as answer:
            if key:
                self.page.keyboard.press(key)
            else:
                self.page.click("#submit")
        self.wait_finished()
        return answer.value.request.post_data_json, sse_events(answer.value.text())

    def wait_finished(self) -> None:
        self.page.wait_for_function(ALL_CARDS_FINISHED_JS, timeout=RESULT_TIMEOUT_MS)

    def cards(self) -> list[dict[str, Any]]:
        return self.page.eval_on_selector_all(
            "#cards .card",
            """cards => cards.map((c) => ({
                 ...c.dataset,
                 prompt: c.querySelector(".prompt").textContent,
                 steps: [...c.querySelectorAll(".step")].map((s) => ({
                   prompt: s.querySelector(".step-prompt").textContent,
                   output: s.querySelector(".step-output").textContent,
                 })),
               }))""",
        )

    def check_clean(self, expected_status: int | None = None) -> None:
        """No problems, but Chromium's console line for an HTTP error the test asked for."""
        expected = f"the server responded with a status of {expected_status}"
        problems = [p for p in self.problems if not (expected_status and expected in p)]
        problems += self.page.evaluate("window.__csp")
        assert not problems, f"{problems}\n{self.server.log_tail()}"


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event, data) of a text/event-stream body, without its ':' keep-alive comments."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), "message")
        data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
        if data:
            events.append((name, json.loads(data)))
    return events


def watch(tab: Tab) -> None:
    def keep_local(route: Any) -> None:
        if urllib.parse.urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            tab.problems.append(f"request to another host: {route.request.url}")
            route.abort()

    def on_console(message: Any) -> None:
        if message.type in ("error", "warning"):
            tab.problems.append(f"console {message.type}: {message.text}")

    tab.page.add_init_script(WATCH_CSP_JS)
    tab.page.route("**/*", keep_local)
    tab.page.on("console", on_console)
    tab.page.on("pageerror", lambda error: tab.problems.append(f"page error: {error}"))


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    made = browser.new_context(
        viewport={"width": 1200, "height": 900},
        permissions=["clipboard-read", "clipboard-write"],
    )
    yield made
    made.close()


@pytest.fixture
def tab(context: Any, server: Server) -> Tab:
    return open_tab(context, server)


def open_tab(context: Any, server: Server) -> Tab:
    opened = Tab(context.new_page(), server)
    watch(opened)
    return opened


# ---- the tests ------------------------------------------------------------------------------


def test_the_page_loads_under_the_csp_with_the_servers_templates_and_model(tab: Tab) -> None:
    response = tab.open()
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp, csp
    _, templates = tab.server.api("/v1/templates")
    _, models = tab.server.api("/v1/models")
    options = tab.page.eval_on_selector_all("#template option", "os => os.map((o) => o.value)")
    assert options == ["", *(t["name"] for t in templates["templates"])]
    model_id = models["data"][0]["id"]
    assert tab.page.get_attribute("#model-id", "title") == model_id
    assert tab.page.text_content("#model-id") == Path(model_id).name == "TIPO-tiny-random"
    tab.check_clean()


def test_tags_stream_into_cards_whose_final_prompt_copy_puts_on_the_clipboard(
    tab: Tab, tmp_path: Path
) -> None:
    tab.open()
    tab.fill(tags="1girl, scenery, (blue sky:1.2)", seed=5, variants=2, template="illustrious")
    tab.fill(tag_length="short", nl_length="very_short")  # a screenshot with both cards
    sent, events = tab.expand()
    assert sent == {
        "stream": True,
        "gen_meta": False,
        "tags": "1girl, scenery, (blue sky:1.2)",
        "tag_length": "short",
        "nl_length": "very_short",
        "template": "illustrious",
        "seed": 5,
        "variants": 2,
    }
    assert events[0] == ("start", {"variants": 2, "seeds": [5, 6]}) and events[-1][0] == "done"
    cards = tab.cards()
    assert [c["state"] for c in cards] == ["done", "done"], tab.page.text_content("#cards")
    for card, variant in zip(cards, stream_by_variant(events), strict=True):
        # Tokens were drawn as they came, before the result; tokens minus rollbacks gave
        # each step's output exactly; the card ends on the final prompt and every step.
        assert int(card["tokensAtResult"]) == variant["tokens_before_result"] > 0
        assert card["resyncs"] == "0"
        assert card["prompt"] == variant["result"]["prompt"]
        assert "(blue sky:1.2)" in card["prompt"] and "masterpiece" in card["prompt"]
        steps = variant["result"]["steps"]
        assert card["steps"] == [{"prompt": s["prompt"], "output": s["output"]} for s in steps]
    assert tab.page.text_content("#status").startswith("Done")

    tab.page.locator("#cards .card").nth(1).get_by_role("button", name="Copy").click()
    clipboard = tab.page.evaluate("navigator.clipboard.readText()")
    assert clipboard == cards[1]["prompt"]

    tab.page.screenshot(path=tmp_path / "tipo-serve.png")
    if SCREENSHOT_DIR:
        shutil.copyfile(tmp_path / "tipo-serve.png", Path(SCREENSHOT_DIR) / "tipo-serve.png")
    tab.check_clean()


def stream_by_variant(events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: its result and how many token events came before it."""
    variants: dict[int, dict[str, Any]] = {}
    for name, data in events:
        variant = variants.setdefault(data.get("variant"), {"tokens_before_result": 0})
        if name == "token" and "result" not in variant:
            variant["tokens_before_result"] += 1
        elif name == "result":
            variant["result"] = data["result"]
    return [variants[i] for i in sorted(k for k in variants if k is not None)]


@pytest.mark.parametrize(
    "values", [{"seed": -1}, {"more": True, "aspect": "banana"}], ids=["seed", "aspect"]
)
def test_bad_input_shows_the_servers_message_in_the_alert(tab: Tab, values: dict) -> None:
    tab.open()
    tab.fill(tags="1girl", **values)
    with tab.page.expect_request("**/v1/expand") as sent:
        tab.page.click("#submit")
    tab.wait_finished()
    status, answer = tab.server.api("/v1/expand", {**sent.value.post_data_json, "stream": False})
    assert 400 <= status < 500, answer
    alert = tab.page.get_by_role("alert").first
    assert answer["error"]["message"] in alert.text_content()
    assert tab.page.locator("#cards .card").count() == 0
    tab.check_clean(expected_status=status)


def test_settings_survive_a_reload_and_the_api_key_stays_in_its_tab(tab: Tab, context: Any) -> None:
    tab.open()
    settings = {
        "tags": "scenery",
        "nl": "a lighthouse at dusk",
        "tag_length": "very_short",
        "nl_length": "short",
        "template": "flux",
        "ban": "text, .*logo",
        "seed": "42",
        "variants": "3",
        "aspect": "832x1216",
        "temperature": "0.7",
        "top_p": "0.9",
        "gen_meta": True,
    }
    tab.fill(more=True, api_key="s3cret", **settings)
    tab.page.reload()
    tab.page.wait_for_selector("body[data-ready]")
    assert read_fields(tab.page, settings) == settings
    assert tab.page.locator("#more").get_attribute("open") is not None
    assert tab.page.input_value("#api_key") == "s3cret"
    assert "s3cret" not in tab.page.evaluate("JSON.stringify(localStorage)")

    other = open_tab(context, tab.server)  # a new tab: same localStorage, own session
    other.open()
    assert read_fields(other.page, settings) == settings
    assert other.page.input_value("#api_key") == ""
    tab.check_clean()
    other.check_clean()


def read_fields(page: Any, names: dict[str, Any]) -> dict[str, Any]:
    return {
        name: page.is_checked(f"#{name}")
        if isinstance(expected, bool)
        else page.input_value(f"#{name}")
        for name, expected in names.items()
    }


def test_the_layout_fits_a_375px_phone(tab: Tab) -> None:
    tab.page.set_viewport_size({"width": 375, "height": 800})
    tab.open()
    # Bans make the server take text back: rollbacks must leave each step's exact output.
    tab.fill(tags="1girl, scenery", seed=3, ban="a, e, o", template="tags-nl-generated")
    tab.fill(more=True, aspect="832x1216")
    _, events = tab.expand()
    assert "rollback" in {name for name, _ in events}
    assert [c["resyncs"] for c in tab.cards()] == ["0"]
    tab.page.locator("#cards .card details summary").first.click()
    overflow = tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    too_wide = tab.page.eval_on_selector_all(
        "body *",
        "els => els.filter((e) => e.getBoundingClientRect().right > 375.5)"
        ".map((e) => e.outerHTML.slice(0, 80))",
    )
    assert too_wide == []
    tab.check_clean()


def test_the_keyboard_alone_reaches_expand_and_ctrl_enter_submits(tab: Tab) -> None:
    tab.open()
    order = []
    for _ in range(20):
        tab.page.keyboard.press("Tab")
        order.append(
            tab.page.evaluate("document.activeElement.id || document.activeElement.tagName")
        )
        if order[-1] == "submit":
            break
    assert order == [
        "tags", "nl", "tag_length", "nl_length", "template", "ban", "seed", "variants",
        "SUMMARY", "submit",
    ]  # fmt: skip
    outline = tab.page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible

    for _ in range(len(order) - 1):
        tab.page.keyboard.press("Shift+Tab")
    assert tab.page.evaluate("document.activeElement.id") == "tags"
    tab.page.keyboard.type("1girl, solo")
    sent, _ = tab.expand(key="Control+Enter")
    assert sent["tags"] == "1girl, solo"
    assert [c["state"] for c in tab.cards()] == ["done"]
    tab.check_clean()


def test_stop_ends_the_stream_and_the_server_serves_the_next_request(tab: Tab) -> None:
    tab.open()
    tab.fill(tags="scenery", variants=16, tag_length="very_long", nl_length="very_long")
    tab.page.click("#submit")
    tab.page.wait_for_selector("#cards .card[data-tokens]:not([data-tokens='0'])")
    tab.page.click("#stop")
    assert tab.page.text_content("#status") == "Stopped."
    # Text streamed in while the request was open: the stopped cards keep what they got.
    stopped = [c for c in tab.cards() if c["state"] == "stopped"]
    assert stopped and all(c["prompt"] for c in stopped)
    assert {c["state"] for c in tab.cards()} <= {"stopped", "done"}
    assert tab.page.is_disabled("#stop") and tab.page.text_content("#error") == ""
    assert tab.page.evaluate("document.activeElement.id") == "submit"
    tab.fill(variants=1, tag_length="very_short", nl_length="very_short")
    tab.expand()
    assert [c["state"] for c in tab.cards()] == ["done"]
    tab.check_clean()


def test_a_locked_server_asks_for_the_key_which_then_opens_it(
    model: Path, context: Any, tmp_path: Path
) -> None:
    with run_server(model, tmp_path, "--api-key", "k3y") as locked:
        tab = open_tab(context, locked)
        tab.page.goto(locked.url + "/")
        alert = tab.page.locator("#error")
        alert.wait_for()
        status, answer = locked.api("/v1/templates")
        assert status == 401 and answer["error"]["message"] in alert.text_content()
        assert tab.page.locator("#more").get_attribute("open") is not None

        tab.fill(api_key="k3y")
        tab.page.keyboard.press("Tab")  # leaving the field loads the templates with the key
        tab.page.wait_for_selector("body[data-ready]")
        assert alert.text_content() == ""
        tab.fill(tags="1girl", tag_length="very_short", nl_length="very_short")
        with tab.page.expect_request("**/v1/expand") as sent:
            tab.page.click("#submit")
        tab.wait_finished()
        assert sent.value.headers["authorization"] == "Bearer k3y"
        assert "k3y" not in json.dumps(sent.value.post_data_json)
        assert [c["state"] for c in tab.cards()] == ["done"]
        tab.check_clean(expected_status=401)
