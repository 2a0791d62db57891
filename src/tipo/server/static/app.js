// The page of `tipo serve`: a form over POST /v1/expand, whose server-sent events are read from
// the fetch body (EventSource cannot POST) and drawn as one card per variant.

const SETTINGS_KEY = "tipo-serve:settings"; // localStorage: every field but the API key
const KEY_KEY = "tipo-serve:api-key"; // sessionStorage: the key lives as long as the tab
const TEXT_FIELDS = ["tags", "nl", "ban", "aspect"];
const NUMBER_FIELDS = ["seed", "variants", "temperature", "top_p"];
const CHOICE_FIELDS = ["tag_length", "nl_length", "template"];
const SAVED_FIELDS = [...TEXT_FIELDS, ...NUMBER_FIELDS, ...CHOICE_FIELDS, "gen_meta"];

const $ = (id) => document.getElementById(id);
const form = $("form");
const field = (name) => form.elements.namedItem(name);
const fromTemplate = (id) => $(id).content.firstElementChild.cloneNode(true);
let running = null; // the AbortController of the request in flight

// ---- settings -------------------------------------------------------------------------------

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY)) || {};
  } catch {
    return {};
  }
}

function saveSettings() {
  const saved = { more_open: $("more").open };
  for (const name of SAVED_FIELDS) {
    const input = field(name);
    saved[name] = input.type === "checkbox" ? input.checked : input.value;
  }
  // Until the server's list has arrived the select cannot hold the saved template.
  if (!document.body.dataset.ready) delete saved.template;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify({ ...loadSettings(), ...saved }));
  sessionStorage.setItem(KEY_KEY, field("api_key").value);
}

function restoreSettings(saved) {
  for (const name of SAVED_FIELDS) {
    if (!(name in saved)) continue;
    const input = field(name);
    if (input.type === "checkbox") input.checked = Boolean(saved[name]);
    else input.value = saved[name];
  }
  $("more").open = Boolean(saved.more_open);
  field("api_key").value = sessionStorage.getItem(KEY_KEY) || "";
}

// ---- talking to the server ------------------------------------------------------------------

class ApiError extends Error {
  constructor({ kind, message, hint }, status) {
    super(message || `HTTP ${status}`);
    this.kind = kind || "http";
    this.hint = hint || null;
  }
}

function headers(json = false) {
  const out = json ? { "Content-Type": "application/json" } : {};
  const key = field("api_key").value.trim();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not JSON (a proxy's page, say): the status says enough
  }
  const retry = response.headers.get("Retry-After");
  if (retry && !error.hint) error.hint = `Try again in ${retry} s.`;
  return new ApiError(error, response.status);
}

async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// The JSON body of /v1/expand; fields left blank are left out for the server's defaults.
function requestBody() {
  const body = { stream: true, gen_meta: field("gen_meta").checked };
  for (const name of [...TEXT_FIELDS, ...CHOICE_FIELDS]) {
    const value = field(name).value.trim();
    if (value) body[name] = value;
  }
  for (const name of NUMBER_FIELDS) {
    const input = field(name);
    if (input.validity.badInput) {
      const label = form.querySelector(`label[for=${name}]`).textContent;
      throw new ApiError({ kind: "invalid_request", message: `${label}: not a number.` });
    }
    if (input.value !== "") body[name] = Number(input.value);
  }
  return body;
}

// Yields [event, data] from a text/event-stream body; ':' lines are keep-alive comments.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const parsed = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (parsed) yield parsed;
    }
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const key = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (key === "event") name = value;
    else if (key === "data") data.push(value);
  }
  return data.length ? [name, JSON.parse(data.join("\n"))] : null;
}

// ---- drawing --------------------------------------------------------------------------------

function showError(target, error) {
  target.textContent = "";
  if (!error) return;
  const message = document.createElement("p");
  message.textContent = error.message;
  target.append(message);
  if (error.hint) {
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = error.hint;
    target.append(hint);
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

// One variant's card: the text being written, then the final prompt; a panel of its steps.
// data-tokens counts the tokens drawn, data-tokens-at-result how many came before the result,
// data-resyncs the steps whose streamed text (tokens minus rollbacks) was not their output.
class Card {
  constructor(index, seed) {
    this.el = fromTemplate("card-template");
    this.index = index;
    this.steps = []; // step k: {text, item}
    this.tokens = 0;
    this.prompt = "";
    Object.assign(this.el.dataset, { variant: index, state: "streaming", tokens: 0, resyncs: 0 });
    this.el.setAttribute("aria-busy", "true");
    const seedText = seed == null ? "" : ` · seed ${seed}`;
    this.part("card-title").textContent = `Variant ${index + 1}${seedText}`;
    this.part("copy").addEventListener("click", () => this.copy());
  }

  part(name) {
    return this.el.querySelector(`.${name}`);
  }

  step({ step, task, prompt }) {
    const item = fromTemplate("step-template");
    item.querySelector(".step-task").textContent = `${step + 1}. ${task}`;
    item.querySelector(".step-prompt").textContent = prompt;
    this.part("step-list").append(item);
    this.steps[step] = { text: "", item };
  }

  setText(k, text) {
    if (!this.steps[k]) this.step({ step: k, task: "step", prompt: "" });
    this.steps[k].text = text;
    this.steps[k].item.querySelector(".step-output").textContent = text;
    this.part("prompt").textContent = this.steps.filter(Boolean).map((s) => s.text).join("\n");
  }

  token({ step, text }) {
    this.tokens += 1;
    this.el.dataset.tokens = this.tokens;
    this.setText(step, (this.steps[step]?.text ?? "") + text);
  }

  rollback({ step, chars }) {
    const text = this.steps[step]?.text ?? "";
    this.setText(step, text.slice(0, Math.max(0, text.length - chars)));
  }

  stepEnd({ step, record }) {
    // The streamed text should already be the output; count the times it was not.
    if (this.steps[step]?.text !== record.output) this.el.dataset.resyncs++;
    this.setText(step, record.output);
    this.steps[step].item.querySelector(".step-meta").textContent =
      `${record.prompt_tokens} prompt + ${record.new_tokens} new tokens · `
      + `${record.seconds.toFixed(2)} s · ${record.finish_reason}`;
  }

  result(result) {
    this.el.dataset.tokensAtResult = this.tokens;
    this.prompt = result.prompt;
    this.part("prompt").textContent = result.prompt;
    this.part("prompt").classList.add("final");
    this.part("copy").disabled = false;
    this.part("meta").textContent = `seed ${result.seed} · ${result.template} · `
      + `${result.tokens.new} new tokens · ${result.timings.total.toFixed(2)} s`;
    this.part("tags").replaceChildren(tagList(result.tags));
    this.finish("done");
  }

  error(error) {
    showError(this.part("card-error"), error);
    this.finish("error");
  }

  finish(state) {
    if (this.el.dataset.state === "streaming") this.el.dataset.state = state;
    this.el.removeAttribute("aria-busy");
  }

  async copy() {
    const button = this.part("copy");
    const ok = await copyText(this.prompt);
    button.textContent = ok ? "Copied" : "Copy failed";
    setStatus(ok ? `Variant ${this.index + 1} copied.` : "Could not copy: select the text.");
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }
}

function tagList(tags) {
  const list = document.createElement("dl");
  for (const [category, names] of Object.entries(tags)) {
    if (!names.length) continue;
    const term = document.createElement("dt");
    term.textContent = category;
    const value = document.createElement("dd");
    value.textContent = names.join(", ");
    list.append(term, value);
  }
  return list;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no clipboard API (plain http to another host) or no permission: the old way
    const area = document.createElement("textarea");
    area.value = text;
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

// ---- one request ----------------------------------------------------------------------------

const HANDLERS = {
  start(view, { variants, seeds }) {
    view.cards = Array.from({ length: variants }, (_, i) => new Card(i, seeds?.[i]));
    $("cards").replaceChildren(...view.cards.map((card) => card.el));
    setStatus(`Writing ${variants} variant${variants > 1 ? "s" : ""}…`);
  },
  step: (view, data) => view.cards[data.variant].step(data),
  token: (view, data) => view.cards[data.variant].token(data),
  rollback: (view, data) => view.cards[data.variant].rollback(data),
  step_end: (view, data) => view.cards[data.variant].stepEnd(data),
  result: (view, data) => view.cards[data.variant].result(data.result),
  error(view, { variant, error }) {
    if (variant == null) throw new ApiError(error);
    view.cards[variant].error(error);
  },
  done(view) {
    view.done = true;
  },
};

async function expand(signal) {
  const body = JSON.stringify(requestBody());
  const response = await fetch("v1/expand", { method: "POST", headers: headers(true), body, signal });
  if (!response.ok) throw await errorOf(response);
  const view = { cards: [], done: false, started: performance.now() };
  try {
    for await (const [name, data] of readEvents(response.body)) HANDLERS[name]?.(view, data);
    if (!view.done) throw new Error("The connection closed before the expansion finished.");
  } finally {
    for (const card of view.cards) card.finish(signal.aborted ? "stopped" : "error");
  }
  const seconds = ((performance.now() - view.started) / 1000).toFixed(1);
  const failed = view.cards.filter((card) => card.el.dataset.state === "error").length;
  setStatus(failed ? `Finished; ${failed} variant(s) failed.` : `Done in ${seconds} s.`);
}

async function run() {
  running?.abort();
  const controller = new AbortController();
  running = controller;
  showError($("error"), null);
  $("cards").replaceChildren();
  $("cards").setAttribute("aria-busy", "true");
  $("stop").disabled = false;
  setStatus("Sending…");
  try {
    await expand(controller.signal);
  } catch (error) {
    if (controller.signal.aborted) return;
    setStatus("Failed.");
    reportError(error);
  } finally {
    if (running === controller) finishRun();
  }
}

function reportError(error) {
  const known = error instanceof ApiError;
  const hint = "Is `tipo serve` still running? Reload the page to retry.";
  showError($("error"), known ? error : { message: error.message, hint });
  if (error.kind === "unauthorized") $("more").open = true;
}

function finishRun() {
  running = null;
  $("stop").disabled = true;
  $("cards").removeAttribute("aria-busy");
}

function stop() {
  if (!running) return;
  running.abort();
  finishRun();
  setStatus("Stopped.");
  $("submit").focus();
}

// ---- start ----------------------------------------------------------------------------------

function showTemplateText() {
  $("template-text").textContent = field("template").selectedOptions[0]?.dataset.text ?? "";
}

// A local folder or file by its name (the full path is in the tooltip); a Hub id as it is.
function shortModelName(id) {
  return /^([/~.]|[A-Za-z]:[\\/])/.test(id) ? id.split(/[\\/]/).filter(Boolean).pop() : id;
}

async function loadServerInfo() {
  try {
    const [{ templates }, { data }] = await Promise.all([
      getJson("v1/templates"), getJson("v1/models"),
    ]);
    const ids = data.map((model) => model.id);
    $("model-id").textContent = ids.map(shortModelName).join(", ") || "none";
    $("model-id").title = ids.join("\n");
    const select = field("template");
    select.replaceChildren(select.options[0]);
    for (const { name, description, text } of templates) {
      const option = new Option(description ? `${name} — ${description}` : name, name);
      option.dataset.text = text;
      select.append(option);
    }
    select.value = loadSettings().template || "";
    if (select.selectedIndex < 0) select.value = "";
    showTemplateText();
    document.body.dataset.ready = "true";
  } catch (error) {
    reportError(error);
  }
}

function main() {
  restoreSettings(loadSettings());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("input", saveSettings);
  form.addEventListener("change", saveSettings);
  $("more").addEventListener("toggle", saveSettings);
  field("template").addEventListener("change", showTemplateText);
  field("api_key").addEventListener("change", () => {
    showError($("error"), null);
    loadServerInfo();
  });
  $("stop").addEventListener("click", stop);
  loadServerInfo();
}

main();
