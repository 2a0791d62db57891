"""The paper's baseline expanders (tipo.eval.baselines) on tiny random models: Promptist and
MagicPrompt on a tiny GPT-2 folder, the chat baseline against real HTTP servers (a local
stdlib one for retries and errors, llama.cpp's for the e2e run), kgen on a tiny TIPO
checkpoint."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from checkpoints import make_tiny_checkpoint
from eval_tiny_lm import make_tiny_gpt2
from tipo.errors import (
    BackendError,
    InvalidRequestError,
    MissingDependencyError,
    ModelNotFoundError,
)
from tipo.eval.baselines import (
    KgenExpander,
    MagicPromptExpander,
    PromptistExpander,
    clean_continuation,
)
from tipo.eval.chat import (
    SCENERY_PHRASE,
    ChatExpander,
    ChatTask,
    chat_messages,
    chat_prompt,
    chat_task,
    parse_reply,
)
from tipo.eval.expanders import make_expander
from tipo.eval.prompts import EvalPrompt

SCENERY = EvalPrompt("scenery", "7", tags=("1girl", "scenery", "masterpiece", "safe"), seed=5)
CAPTION = EvalPrompt("short", "3", caption="A cat sleeping on a wet roof", seed=11)
# Different lengths, so a batch of them is padded.
PROMPTS = [
    CAPTION,
    SCENERY,
    EvalPrompt(
        "truncated_long",
        "9",
        caption="Several railroad tracks with one train passing "
        "by at night. The roof is wet from the rain.",
        seed=2**62 + 3,
    ),
    EvalPrompt("short", "4", caption="a dog", seed=0),
]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


# --- Promptist ----------------------------------------------------------------------------------


def _card_generate(folder: Path, text: str, max_new_tokens: int) -> str:
    """The Promptist model card's call, one prompt at a time (8 beams, 8 returned, the first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    input_ids = tokenizer(text.strip() + " Rephrase:", return_tensors="pt").input_ids
    eos = tokenizer.eos_token_id
    outputs = model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens,
                             num_beams=8, num_return_sequences=8, eos_token_id=eos,
                             pad_token_id=eos, length_penalty=-1.0)  # fmt: skip
    return tokenizer.decode(outputs[0][input_ids.shape[-1] :], skip_special_tokens=True).strip()


def test_promptist_is_the_model_cards_beam_search(gpt2_dir, one_torch_thread):
    expander = PromptistExpander("promptist", model=str(gpt2_dir), max_new_tokens=12)
    outputs = expander.expand(PROMPTS)
    assert outputs == [_card_generate(gpt2_dir, p.text, 12) for p in PROMPTS]
    assert all(outputs)


def test_promptist_batches_equal_one_at_a_time(gpt2_dir, one_torch_thread):
    batched = PromptistExpander("p", model=str(gpt2_dir), max_new_tokens=12, batch_size=4)
    single = PromptistExpander("p", model=str(gpt2_dir), max_new_tokens=12, batch_size=1)
    assert batched.expand(PROMPTS) == single.expand(PROMPTS)
    assert batched.settings() == single.settings()  # batch size is not an output setting


def test_promptist_settings_name_what_changes_the_output():
    settings = PromptistExpander("p", tokenizer="gpt2", num_beams=4).settings()
    assert settings == {"kind": "promptist", "model": "microsoft/Promptist", "tokenizer": "gpt2",
                        "num_beams": 4, "max_new_tokens": 75, "length_penalty": -1.0,
                        "weights": None}  # fmt: skip  # a Hub id: its name pins it
    json.dumps(settings)


# --- MagicPrompt --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def magicprompt(gpt2_dir) -> MagicPromptExpander:
    return MagicPromptExpander("magicprompt", model=str(gpt2_dir), max_new_tokens=16, batch_size=4)


def test_magicprompt_output_is_the_input_continued(magicprompt, one_torch_thread):
    outputs = magicprompt.expand(PROMPTS)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        assert output.startswith(prompt.text) and "\n" not in output
    assert any(len(o) > len(p.text) for p, o in zip(PROMPTS, outputs, strict=True))


def test_magicprompt_is_reproducible_per_seed(magicprompt, one_torch_thread):
    first = magicprompt.expand(PROMPTS)
    assert magicprompt.expand(PROMPTS) == first
    reseeded = [EvalPrompt(p.test, p.id, p.tags, p.caption, seed=p.seed + 1) for p in PROMPTS]
    assert magicprompt.expand(reseeded) != first


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_magicprompt_rows_do_not_depend_on_batch_mates(
    gpt2_dir, repetition_penalty, one_torch_thread
):
    options = dict(model=str(gpt2_dir), max_new_tokens=16, repetition_penalty=repetition_penalty)
    batched = MagicPromptExpander("m", batch_size=4, **options).expand(PROMPTS)
    single = MagicPromptExpander("m", batch_size=1, **options)
    assert [single.expand([p])[0] for p in PROMPTS] == batched
    # The same prompt among other batch mates, at another row.
    assert single.expand([PROMPTS[2], PROMPTS[0]]) == [batched[2], batched[0]]
    assert MagicPromptExpander("m", batch_size=3, **options).expand(PROMPTS[::-1]) == batched[::-1]


def test_magicprompt_cleaning_keeps_one_line_without_links():
    assert clean_continuation(", 8k, artstation.com  trending\nnext prompt") == ", 8k, trending"
    assert clean_continuation(" <lora:x> sharp focus, ") == " lora:x sharp focus"
    assert clean_continuation("\nanother prompt") == ""


# --- chat models --------------------------------------------------------------------------------


def test_scenery_task_gives_tags_as_info_and_the_papers_phrase():
    task = chat_task(SCENERY)
    assert task == ChatTask("danbooru tags: 1girl, scenery, masterpiece, safe", SCENERY_PHRASE,
                            "1girl, scenery, masterpiece, safe")  # fmt: skip
    system, user = chat_messages(task)
    assert system["role"] == "system" and user["role"] == "user"
    assert "danbooru tags: 1girl, scenery, masterpiece, safe" in user["content"]
    assert f"- {SCENERY_PHRASE}\n" in user["content"] and '{"prompt":' in user["content"]


def test_caption_task_begins_with_the_caption_and_has_no_info():
    task = chat_task(CAPTION)
    assert task == ChatTask("", "A cat sleeping on a wet roof", "")
    assert "- A cat sleeping on a wet roof\n" in chat_messages(task)[1]["content"]
    assert "(none)" in chat_messages(task)[1]["content"]
    both = chat_task(EvalPrompt("t", "1", tags=("1girl",), caption="on a hill"))
    assert both == ChatTask("danbooru tags: 1girl", "on a hill", "1girl")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"prompt": "A beautiful scenery of a lake"}', "A beautiful scenery of a lake"),
        ('```json\n{"prompt": "A lake,\\n at dawn"}\n```', "A lake, at dawn"),
        ('Sure!\n{"prompt": "A lake"}\n\n{"prompt": "Another"}', "A lake"),
        ('{\n  "prompt": "A  lake"\n}', "A lake"),
        ("A lake at dawn,\nmist over the water", "A lake at dawn, mist over the water"),
        ('{"text": "A lake"}', '{"text": "A lake"}'),
        ("", ""),
    ],
)
def test_reply_parsing(reply, expected):
    assert parse_reply(reply) == expected


def test_final_prompt_is_the_tags_then_the_text():
    task = chat_task(SCENERY)
    reply = '{"prompt": "A beautiful scenery of hills"}'
    assert (
        chat_prompt(task, reply)
        == "1girl, scenery, masterpiece, safe, A beautiful scenery of hills"
    )
    assert chat_prompt(task, "") == f"1girl, scenery, masterpiece, safe, {SCENERY_PHRASE}"
    assert chat_prompt(chat_task(CAPTION), '{"prompt": "A cat sleeping"}') == "A cat sleeping"


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("TIPO_TEST_CHAT_KEY", raising=False)
    expander = ChatExpander(
        "gpt", base_url="http://127.0.0.1:9/v1", api_key_env="TIPO_TEST_CHAT_KEY"
    )
    with pytest.raises(InvalidRequestError) as caught:
        expander.expand([SCENERY])
    assert (
        "TIPO_TEST_CHAT_KEY" in caught.value.message and "TIPO_TEST_CHAT_KEY" in caught.value.hint
    )
    monkeypatch.setenv("TIPO_TEST_CHAT_KEY", "sk-secret-value")
    assert "sk-secret" not in json.dumps(expander.settings())


def test_base_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8080/v1/")
    assert ChatExpander("c").settings()["base_url"] == "http://localhost:8080/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert ChatExpander("c").settings()["base_url"] == "https://api.openai.com/v1"


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with ``server.answer(body)``: (status, headers, JSON body)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        status, headers, answer = self.server.answer(body)  # type: ignore[attr-defined]
        data = json.dumps(answer).encode()
        self.send_response(status)
        for key, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[ThreadingHTTPServer]:
    """A real HTTP server on 127.0.0.1; by default it plays ``server.script`` in order."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.received, server.script = [], []  # type: ignore[attr-defined]
    server.answer = lambda body: server.script.pop(0)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _chat_reply(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def test_busy_server_is_retried_and_the_request_is_the_papers(http_server, monkeypatch):
    monkeypatch.setenv("TIPO_TEST_CHAT_KEY", "sk-test")
    reply = _chat_reply('{"prompt": "A beautiful scenery of hills"}')
    http_server.script += [(429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}),
                           (200, {}, reply)]  # fmt: skip
    url = f"http://127.0.0.1:{http_server.server_port}/v1"
    expander = ChatExpander("gpt", base_url=url, api_key_env="TIPO_TEST_CHAT_KEY")
    assert expander.expand([SCENERY]) == [
        "1girl, scenery, masterpiece, safe, A beautiful scenery of hills"]  # fmt: skip
    expander.close()
    (path, headers, body), again = http_server.received
    assert path == "/v1/chat/completions" and again[2] == body
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "gpt-4o-mini" and body["messages"] == chat_messages(chat_task(SCENERY))
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1.0, 1.0, 2048)
    assert body["seed"] == SCENERY.seed


def test_refused_request_is_a_backend_error_with_the_servers_message(http_server):
    http_server.script.append((401, {}, {"error": {"message": "Incorrect API key provided"}}))
    url = f"http://127.0.0.1:{http_server.server_port}/v1"
    expander = ChatExpander("gpt", base_url=url, api_key_env="")
    with pytest.raises(BackendError, match="401: Incorrect API key provided"):
        expander.expand([CAPTION])
    assert len(http_server.received) == 1  # not retried
    assert "Authorization" not in http_server.received[0][1]


def test_unreachable_server_is_a_backend_error():
    expander = ChatExpander("gpt", base_url="http://127.0.0.1:9/v1", api_key_env="", retries=0)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9"):
        expander.expand([CAPTION])


def test_replies_come_back_in_prompt_order(http_server):
    """Requests run four at a time; each reply echoes its request's phrase."""

    def echo(body: dict) -> tuple[int, dict, dict]:
        phrase = body["messages"][1]["content"].split("\n- ", 1)[1].split("\n", 1)[0]
        return 200, {}, _chat_reply(json.dumps({"prompt": phrase}))

    http_server.answer = echo
    prompts = [EvalPrompt("short", str(i), caption=f"prompt number {i}", seed=i) for i in range(9)]
    url = f"http://127.0.0.1:{http_server.server_port}/v1"
    outputs = ChatExpander("gpt", base_url=url, api_key_env="").expand(prompts)
    assert outputs == [p.caption for p in prompts]


# --- against llama.cpp's server (the xllamacpp wheel) -------------------------------------------


@pytest.fixture(scope="module")
def llama_chat_server(pytestconfig, tmp_path_factory) -> Iterator[str]:
    from host_cache import progress_visible
    from remote_servers import ensure_xllamacpp, start_llama_server
    from tipo.convert import convert

    base = tmp_path_factory.mktemp("chat-server")
    gguf = convert(make_tiny_checkpoint(base / "hf"), base / "tiny-F16.gguf")
    with progress_visible(pytestconfig):
        server = start_llama_server(ensure_xllamacpp(), gguf, base / "logs", n_parallel=2)
    yield server.url
    server.stop()


@pytest.mark.e2e
def test_chat_expander_against_llama_cpp(llama_chat_server):
    expander = ChatExpander("local", model="tiny", base_url=llama_chat_server, api_key_env="",
                            max_tokens=16, concurrency=2)  # fmt: skip
    reseeded = EvalPrompt(SCENERY.test, SCENERY.id, SCENERY.tags, seed=SCENERY.seed + 1)
    scenery, caption, other_seed = expander.expand([SCENERY, CAPTION, reseeded])
    expander.close()
    tags = ", ".join(SCENERY.tags)
    assert scenery.startswith(tags + ", ") and "\n" not in scenery
    # The random model's text came back (not the phrase a reply without text falls back to)...
    assert scenery != f"{tags}, {SCENERY_PHRASE}" and caption and "\n" not in caption
    # ... and the seed reached the sampler.
    assert other_seed.startswith(tags + ", ") and other_seed != scenery


# --- the reference library (kgen) ---------------------------------------------------------------

FAST_KGEN = {"max_new_tokens": 24, "max_retry": 0}  # a random model never meets the retry criteria


@pytest.fixture(scope="module")
def kgen_model(tmp_path_factory) -> Path:
    pytest.importorskip("kgen")
    return make_tiny_checkpoint(tmp_path_factory.mktemp("kgen-tiny"))


def test_kgen_is_deterministic_per_seed_and_keeps_the_input(kgen_model, one_torch_thread):
    expander = KgenExpander("kgen", model=str(kgen_model), options=FAST_KGEN)
    try:
        first = expander.expand([SCENERY, CAPTION])
        assert expander.expand([SCENERY, CAPTION]) == first
        reseeded = EvalPrompt(SCENERY.test, SCENERY.id, SCENERY.tags, seed=SCENERY.seed + 1)
        assert expander.expand([reseeded]) != first[:1]
    finally:
        expander.close()
    scenery, caption = first
    assert scenery.startswith("1girl, \n")  # the reference format: special tags first
    assert all(tag in scenery for tag in SCENERY.tags)
    # NL-only input: kgen extends the caption (the random model writes no tag line, so the
    # format's tag slots leave their separators behind, as the reference does).
    assert CAPTION.caption in caption


def test_kgen_logs_to_stderr(kgen_model, capsys, one_torch_thread):
    """kgen logs to stdout, where the CLI writes its results; also when it was imported
    before (its handler then holds the stdout of that time)."""
    from kgen.logging import logger

    expander = KgenExpander("kgen", model=str(kgen_model), options=FAST_KGEN)
    try:
        expander.expand([CAPTION])
    finally:
        expander.close()
    logger.warning("a kgen message")
    captured = capsys.readouterr()
    assert "a kgen message" in captured.err and "kgen" not in captured.out


def test_kgen_seed_zero_is_still_a_fixed_seed(kgen_model, one_torch_thread):
    expander = KgenExpander("kgen", model=str(kgen_model), options=FAST_KGEN)
    try:
        zero = EvalPrompt("scenery", "0", tags=("scenery",), seed=0)
        assert expander.expand([zero]) == expander.expand([zero])
    finally:
        expander.close()


def test_kgen_settings_have_the_library_version_and_the_node_defaults():
    settings = KgenExpander("k", model="some/folder", options={"top_k": 40}).settings()
    assert settings["kind"] == "tipo-kgen" and settings["kgen"] == "0.3.1"
    options = settings["options"]
    assert (options["temperature"], options["top_p"], options["min_p"], options["top_k"]) == (
        0.5, 0.95, 0.05, 40)  # fmt: skip
    assert options["format"].startswith("<|special|>, \n<|characters|>")
    json.dumps(settings)


def test_two_kgen_models_cannot_be_open_at_once(kgen_model, tmp_path, one_torch_thread):
    other = shutil.copytree(kgen_model, tmp_path / "other")
    first = KgenExpander("a", model=str(kgen_model), options=FAST_KGEN)
    same = KgenExpander("b", model=str(kgen_model), options=FAST_KGEN)
    second = KgenExpander("c", model=str(other), options=FAST_KGEN)
    try:
        first.expand([SCENERY])
        assert same.expand([SCENERY]) == first.expand([SCENERY])  # one model, shared
        with pytest.raises(InvalidRequestError, match="one model at a time"):
            second.expand([SCENERY])
        first.close()
        same.close()
        assert second.expand([SCENERY])
    finally:
        for expander in (first, same, second):
            expander.close()


def test_missing_kgen_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "kgen", None)
    with pytest.raises(MissingDependencyError) as caught:
        KgenExpander("k", model="x").expand([SCENERY])
    assert caught.value.hint == "pip install tipo-kgen"


def test_unknown_or_bad_kgen_options_are_refused():
    with pytest.raises(InvalidRequestError, match="temprature"):
        KgenExpander("k", model="x", options={"temprature": 0.1})
    with pytest.raises(InvalidRequestError, match="tag_length"):
        KgenExpander("k", model="x", options={"tag_length": "longer"})


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["promptist", "magicprompt"])
def test_missing_model_folder_is_model_not_found(kind, tmp_path):
    expander = make_expander("b", {"kind": kind, "model": str(tmp_path / "missing")})
    with pytest.raises(ModelNotFoundError) as caught:
        expander.expand([CAPTION])
    assert "missing" in caught.value.message and caught.value.hint


def test_folder_without_tokenizer_suggests_the_cards_tokenizer(gpt2_dir, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(gpt2_dir / name, folder / name)
    with pytest.raises(ModelNotFoundError) as caught:
        PromptistExpander("p", model=str(folder)).expand([CAPTION])
    assert 'tokenizer = "gpt2"' in caught.value.hint
    # The override loads another folder's tokenizer.
    assert PromptistExpander("p", model=str(folder), tokenizer=str(gpt2_dir),
                             max_new_tokens=4).expand([CAPTION])  # fmt: skip


@pytest.mark.parametrize(
    ("table", "match"),
    [({"kind": "promptist", "beams": 4}, "beams"),
     ({"kind": "magicprompt", "top_p": 0.9}, "top_p"),
     ({"kind": "openai", "key": "sk-..."}, "key"),
     ({"kind": "tipo-kgen"}, "model"),
     ({"kind": "promptist", "num_beams": 0}, "num_beams")],
)  # fmt: skip
def test_bad_options_fail_when_the_expander_is_made(table, match):
    with pytest.raises(InvalidRequestError, match=match):
        make_expander("baseline", table)


def test_nothing_to_expand_loads_nothing(tmp_path, monkeypatch):
    """A rerun whose prompts are all cached asks for nothing: no model, no key needed."""
    monkeypatch.delenv("TIPO_TEST_CHAT_KEY", raising=False)
    missing = str(tmp_path / "missing")
    expanders = [PromptistExpander("p", model=missing), MagicPromptExpander("m", model=missing),
                 ChatExpander("c", api_key_env="TIPO_TEST_CHAT_KEY"),
                 KgenExpander("k", model=missing)]  # fmt: skip
    for expander in expanders:
        assert expander.expand([]) == []
        json.dumps(expander.settings())
        expander.close()
