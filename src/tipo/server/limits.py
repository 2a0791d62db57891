"""The server's limits on what one request may ask for, applied before anything runs.

Besides sizes and counts, two things a command-line user may do are refused over HTTP:
* a template that names a file (the server never reads a path taken from a request);
* a ban pattern that could backtrack for long (``(a+)+``, ``.*a.*b.*c``, see
  ``backtracking_risk``): bans run on the engine thread that every client shares.
"""

from __future__ import annotations

from ..errors import InvalidRequestError
from ..request import ExpandRequest
from ..sampling import SamplingParams, random_seed
from ..templates import TEMPLATES, has_slots
from .schemas import ExpandBody
from .settings import ServerSettings

_UNBOUNDED = "*+{"  # what repeats a group ("?" takes it at most once: harmless)
MAX_BAN_REPEATS = 2


def expand_requests(body: ExpandBody, settings: ServerSettings) -> list[ExpandRequest]:
    """One request per variant (seeds seed, seed+1, ...), or InvalidRequestError."""
    _check_sizes(body, settings)
    options = body.request_options()
    if "max_new_tokens" not in options:
        options["max_new_tokens"] = min(settings.max_new_tokens, SamplingParams.max_new_tokens)
    request = ExpandRequest.create(**options)
    seed = request.seed if request.seed is not None else random_seed()
    return [request.with_seed((seed + i) % 2**63) for i in range(body.variants)]


def _check_sizes(body: ExpandBody, settings: ServerSettings) -> None:
    tags = body.tags if isinstance(body.tags, str) else ", ".join(body.tags)
    texts = {"tags": tags, "nl": body.nl, "template": body.template or ""}
    for name, text in texts.items():
        _at_most(f"{name} has {len(text):,} characters", len(text), settings.max_text_chars)
    _at_most(f"variants is {body.variants}", body.variants, settings.max_variants)
    _at_most(f"retries is {body.retries}", body.retries, settings.max_retries)
    if body.max_new_tokens is not None:
        tokens = body.max_new_tokens
        _at_most(f"max_new_tokens is {tokens}", tokens, settings.max_new_tokens)
    bans = body.ban.split(",") if isinstance(body.ban, str) else body.ban
    _at_most(f"{len(bans)} bans were given", len(bans), settings.max_bans)
    for ban in bans:
        _check_ban(ban, settings.max_ban_chars)
    if body.template is not None:
        _check_template(body.template)


def _at_most(what: str, value: int, limit: int) -> None:
    if value > limit:
        raise InvalidRequestError(f"{what}; this server allows at most {limit:,}")


def _check_ban(ban: str, max_chars: int) -> None:
    _at_most(f"a ban has {len(ban):,} characters", len(ban), max_chars)
    risk = backtracking_risk(ban)
    if risk is not None:
        raise InvalidRequestError(
            f"the ban {ban!r} could take very long to match: {risk}",
            hint="write it more simply, e.g. '[ab]+' for '(a|b)+', 'a+' for '(a+)+'",
        )


def backtracking_risk(pattern: str) -> str | None:
    """Why matching ``pattern`` could take very long, or None. Python's regex engine
    backtracks: a repeated group that holds a repeat or an alternation ("(a+)+", "(a|aa)+")
    takes exponential time on the wrong text, and each further unbounded repeat (".*a.*b.*c")
    multiplies the time by the text's length. A scan over the pattern's groups; escapes and
    character classes hold none."""
    stack = [False]  # per open group: does it hold a repeat or an alternation?
    i, in_class, repeats = 0, False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            stack.append(False)
            i += pattern.startswith("?", i + 1)  # "(?:", "(?P<": not a quantifier
        elif char == ")" and len(stack) > 1:
            risky = stack.pop()
            if risky and i + 1 < len(pattern) and pattern[i + 1] in _UNBOUNDED:
                return "it repeats a group that holds a repeat or an alternation"
            stack[-1] = stack[-1] or risky
        elif char in "*+?{|":
            stack[-1] = True
            repeats += char in _UNBOUNDED
        i += 1
    if repeats > MAX_BAN_REPEATS:
        return f"it has {repeats} unbounded repeats (at most {MAX_BAN_REPEATS})"
    return None


def _check_template(template: str) -> None:
    if template in TEMPLATES or template == "" or has_slots(template):
        return
    names = ", ".join(name for name in TEMPLATES if " " not in name)
    raise InvalidRequestError(
        f"unknown template {template!r}",
        hint=f"use a name ({names}) or template text with <|slots|>; the server reads no files",
    )


__all__ = ["backtracking_risk", "expand_requests"]
