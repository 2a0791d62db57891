"""One request in flight: its plan, its draft, and the step it waits on.

A run is a small state machine so that many runs (prompt variants, server requests) can advance
together: each round the pipeline asks every run for its next generation, sends them to the
backend as one batch, and hands each run its result.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .backends.base import Generation, GenerationRequest
from .bans import BanList
from .constraints import DecodeControl, FieldConstraint, StepFields, TagTrie, TokenTable
from .errors import InvalidRequestError
from .planning import PlanOptions, Step, operation_steps, plan
from .postprocess import Draft, PostOptions, merge_step, split_sentences
from .protocol import (
    ModelRequest,
    Task,
    build_prompt,
    format_aspect_ratio,
    normalize_meta,
    parse_output,
)
from .render import UserInput, render_prompt
from .request import ExpandRequest
from .result import ExpandResult, StepRecord
from .sampling import derive_seed, random_seed
from .tags import TagDatabase
from .templates import get_template
from .tokenizer import TipoTokenizer

# Metadata lines are written from these categories of the draft's tags.
_META_CATEGORIES = ("meta", "rating", "artist", "characters", "copyrights", "quality")
MIN_NEW_TOKENS = 16


@dataclass
class _Pending:
    step: Step
    prompt: str
    seed: int
    constraint: FieldConstraint | None


@dataclass(frozen=True)
class RunContext:
    """What runs share: the model's tokenizer and context, the tag database, and for
    decode-time control the token table (None when the backend cannot apply constraints) and
    the tag vocabulary (None unless some request asks for it)."""

    db: TagDatabase
    tokenizer: TipoTokenizer
    context_length: int
    tokens: TokenTable | None = None
    vocabulary: TagTrie | None = None
    rollback: bool = False


class RequestRun:
    def __init__(self, request: ExpandRequest, context: RunContext) -> None:
        self.request = request
        self.seed = request.seed if request.seed is not None else random_seed()
        self.context = context
        self.tokenizer = context.tokenizer
        self.context_length = context.context_length
        db = self.db = context.db
        self.template = get_template(request.template)
        user = UserInput.parse(request.tags, request.nl, db)
        self.style = user.style
        tags = user.tags.copy()
        options = self._plan_options(user.nl)
        if request.operation is not None:
            self.steps = operation_steps(Task.parse(request.operation), options)
        else:
            self.steps = plan(bool(tags.special or tags.general), bool(user.nl), options)
        self.draft = Draft(tags=tags, nl=user.nl, extended=user.nl)
        bans = BanList.parse(request.ban)
        self.post = PostOptions(request.tag_length, request.nl_length, bans, request.shuffle)
        vocabulary = context.vocabulary if request.vocabulary else None
        self.control = DecodeControl(bans=bans, vocabulary=vocabulary, rollback=context.rollback)
        self.rng = random.Random(derive_seed(self.seed, "shuffle"))
        self.records: list[StepRecord] = []
        self.step_index, self.attempt = 0, 0
        self.pending: _Pending | None = None
        self.started = time.perf_counter()

    def _plan_options(self, nl: str) -> PlanOptions:
        r = self.request
        return PlanOptions(
            expand_tags=r.expand_tags,
            expand_nl=r.expand_nl,
            tag_first=r.tag_first,
            extra_nl=self.template.wants_caption(bool(nl)),
            gen_meta=r.gen_meta,
            tag_length=r.tag_length,
            nl_length=r.nl_length,
        )

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.steps)

    def model_request(self, step: Step) -> ModelRequest:
        tags = self.draft.tags
        meta: dict[str, object] = {c: tags[c] for c in _META_CATEGORIES}
        if self.request.aspect is not None:
            meta["aspect ratio"] = format_aspect_ratio(self.request.aspect)
        return ModelRequest(
            tags=tuple(tags.special + tags.general),
            nl=self.draft.nl,
            task=step.task,
            length=step.length,
            meta=normalize_meta(meta),  # type: ignore[arg-type]
            gen_meta=step.gen_meta,
            expand=step.expand,
        )

    def next_generation(self) -> GenerationRequest | None:
        if self.done:
            return None
        step = self.steps[self.step_index]
        prompt = build_prompt(self.model_request(step))
        ids = self.tokenizer.encode(prompt)
        room = self.context_length - len(ids)
        if room < MIN_NEW_TOKENS and self.records:
            # Earlier steps (or a retry feeding its output back) grew the prompt past the
            # context: keep what was generated and skip this step, rather than lose it all.
            self.step_index, self.attempt = self.step_index + 1, 0
            return self.next_generation()
        if room < MIN_NEW_TOKENS:
            raise InvalidRequestError(
                f"the model-facing prompt is {len(ids)} tokens; the model's context is "
                f"{self.context_length}",
                hint="give fewer tags or a shorter sentence",
            )
        seed = derive_seed(self.seed, self.step_index, self.attempt)
        sampling = self.request.sampling
        if sampling.max_new_tokens > room:
            sampling = sampling.with_(max_new_tokens=room)
        constraint = self._constraint(step, prompt, sampling.max_new_tokens)
        self.pending = _Pending(step, prompt, seed, constraint)
        return GenerationRequest(tuple(ids), sampling, seed, constraint, affinity=self.seed)

    def _constraint(self, step: Step, prompt: str, budget: int) -> FieldConstraint | None:
        if not self.request.control or self.context.tokens is None:
            return None
        return FieldConstraint(
            self.context.tokens,
            StepFields.from_prompt(prompt, step.task, step.gen_meta),
            self.control,
            self.db,
            tag_length=self.request.tag_length,
            nl_length=self.request.nl_length,
            budget=budget,
        )

    def accept(self, generation: Generation) -> None:
        pending = self.pending
        if pending is None:
            raise RuntimeError("accept() without a pending generation")
        self.pending = None
        text = self.tokenizer.decode(generation.token_ids)
        before = self.draft
        full = pending.prompt + text
        if generation.finish_reason == "length":
            full = drop_unfinished_tag(full)
        output = parse_output(full)
        self.draft = merge_step(before, pending.step, output, self.db, self.post, self.rng)
        self.records.append(self._record(pending, generation, text))
        if (
            self.attempt < self.request.retries
            and self._too_short(pending.step)
            and (self.draft != before)
        ):
            self.attempt += 1
        else:
            self.step_index += 1
            self.attempt = 0

    def _record(self, pending: _Pending, generation: Generation, text: str) -> StepRecord:
        step = pending.step
        return StepRecord(
            task=step.task.value if step.task else "tag",
            length=step.length.value,
            expand=step.expand,
            gen_meta=step.gen_meta,
            attempt=self.attempt,
            seed=pending.seed,
            prompt=pending.prompt,
            output=text,
            prompt_tokens=generation.prompt_tokens,
            new_tokens=len(generation.token_ids) + (generation.finish_reason == "eos"),
            finish_reason=generation.finish_reason,
            seconds=generation.prefill_seconds + generation.decode_seconds,
        )

    def _too_short(self, step: Step) -> bool:
        """The reference's retry test: is the step's own field under its length minimum?"""
        if step.output_field == "tag":
            tags = self.draft.tags
            return len(tags.special) + len(tags.general) < step.length.tag_range[0]
        text = self.draft.generated if step.output_field == "long" else ""
        sentences = split_sentences(text or self.draft.extended)
        return len(sentences) < step.length.nl_range[0]

    def result(self) -> ExpandResult:
        d = self.draft
        prompt = render_prompt(self.template, d.tags, d.extended, d.generated, self.style)
        generate = sum(r.seconds for r in self.records)
        return ExpandResult(
            prompt=prompt,
            tags=d.tags.copy(),
            extended=d.extended,
            generated=d.generated,
            seed=self.seed,
            template=self.template.name,
            steps=list(self.records),
            timings={"total": time.perf_counter() - self.started, "generate": generate},
        )


def drop_unfinished_tag(text: str) -> str:
    """A generation cut by its token budget inside a tag line ends with a cut tag ("solo
    focu"): keep the line up to its last comma."""
    head, _, last_line = text.rpartition("\n")
    if not last_line.startswith("tag:") or "," not in last_line:
        return text
    return f"{head}\n{last_line.rsplit(',', 1)[0]}" if head else last_line.rsplit(",", 1)[0]


__all__ = ["RequestRun", "RunContext", "drop_unfinished_tag"]
