"""Request planning: which model steps a user request needs (protocol doc §5).

A step is one generation: a task (None is plain tag continuation), the length token it sends,
and whether the model continues the prompt's last field (``expand``) or writes the task's output
field from its key.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import Length, Task, task_fields


@dataclass(frozen=True)
class Step:
    task: Task | None
    length: Length
    expand: bool
    gen_meta: bool = False

    @property
    def output_field(self) -> str:
        """The field this step is asked to write (or continue)."""
        return self.task.fields[-1] if self.task is not None else "tag"

    def describe(self) -> str:
        task = self.task.value if self.task else "tag"
        mode = "expand" if self.expand else "write"
        return f"{task} ({self.length.value}, {mode}{', gen_meta' if self.gen_meta else ''})"


@dataclass(frozen=True)
class PlanOptions:
    """The user's choices. ``extra_nl`` asks for a newly generated caption (the template wants
    one); ``tag_first`` orders the two expansions when both tags and NL are given."""

    expand_tags: bool = True
    expand_nl: bool = True
    tag_first: bool = True
    extra_nl: bool = False
    gen_meta: bool = False
    tag_length: Length = Length.LONG
    nl_length: Length = Length.LONG


def plan(has_tags: bool, has_nl: bool, options: PlanOptions) -> list[Step]:
    """The steps for a request. ``has_tags`` counts content tags (special + general) only:
    metadata tags such as artists go into metadata lines and do not make a tag field."""
    steps, extra = _table(has_tags, has_nl, options)
    if options.extra_nl and extra is not None:
        steps.append(extra)
    if steps and options.gen_meta:
        last = steps[-1]
        steps[-1] = Step(last.task, last.length, last.expand, gen_meta=True)
    return steps


def operation_steps(operation: Task | None, options: PlanOptions) -> list[Step]:
    """One named operation instead of a plan (the reference's single-operation node): the
    task (None: plain tag continuation) expands its own output field, at that field's length
    target, with nothing before or after it."""
    to_tags = task_fields(operation)[-1] == "tag"
    length = options.tag_length if to_tags else options.nl_length
    return [Step(operation, length, expand=True, gen_meta=options.gen_meta)]


def _table(has_tags: bool, has_nl: bool, o: PlanOptions) -> tuple[list[Step], Step | None]:
    tag, nl = o.tag_length, o.nl_length
    if not has_tags and not has_nl:
        return [Step(None, tag, True)], Step(Task.TAG_TO_LONG, nl, True)
    if not has_nl:
        steps = [Step(None, tag, True)] if o.expand_tags else []
        return steps, Step(Task.TAG_TO_LONG, nl, False)
    if not has_tags:
        return [Step(Task.LONG_TO_TAG, tag, o.expand_nl)], Step(
            Task.SHORT_TO_TAG_TO_LONG, nl, False
        )
    if o.expand_tags and o.expand_nl:
        if o.tag_first:
            return (
                [Step(Task.SHORT_TO_TAG, tag, True), Step(Task.TAG_TO_LONG, nl, True)],
                Step(Task.SHORT_TO_TAG_TO_LONG, nl, False),
            )
        return (
            [Step(Task.TAG_TO_LONG, nl, True), Step(Task.LONG_TO_TAG, tag, True)],
            Step(Task.TAG_TO_SHORT_TO_LONG, nl, False),
        )
    # Expanding only one side: the second step already writes a new caption. The reference
    # appends the same step again as its "extra" caption; running it twice only wastes time.
    if o.expand_tags:
        return [
            Step(Task.SHORT_TO_TAG, tag, True),
            Step(Task.SHORT_TO_TAG_TO_LONG, nl, False),
        ], None
    if o.expand_nl:
        return [Step(Task.TAG_TO_LONG, tag, True), Step(Task.TAG_TO_SHORT_TO_LONG, nl, False)], None
    return [], Step(Task.SHORT_TO_TAG_TO_LONG, nl, False)


__all__ = ["PlanOptions", "Step", "operation_steps", "plan"]
