"""The final prompt: clean results laid out by a template, in the user's own syntax."""

from __future__ import annotations

from dataclasses import dataclass, field

from .postprocess import dedupe
from .syntax import (
    BREAK,
    NaturalPrompt,
    PromptTag,
    UserPrompt,
    escape,
    parse_nl_prompt,
    parse_tag_prompt,
)
from .tags import TagDatabase, Tags
from .templates import Template


@dataclass(frozen=True)
class UserStyle:
    """How the user wrote their tags, keyed by the database-normalised name, and the markers
    (BREAK, extra networks) that followed each tag; ``None`` holds markers before any tag."""

    written: dict[str, PromptTag] = field(default_factory=dict)
    markers_after: dict[str | None, list[str]] = field(default_factory=dict)
    nl: NaturalPrompt = field(default_factory=lambda: NaturalPrompt(""))

    @classmethod
    def of(cls, prompt: UserPrompt, nl: NaturalPrompt, db: TagDatabase) -> UserStyle:
        names = {tag.text: db.lookup(tag.text)[1] for tag in prompt.tags}
        markers: dict[str | None, list[str]] = {}
        for marker in prompt.markers:
            anchor = names.get(marker.after) if marker.after is not None else None
            markers.setdefault(anchor, []).append(marker.text)
        return cls({names[t.text]: t for t in prompt.tags}, markers, nl)

    def render_tags(self, tags: list[str]) -> list[str]:
        out: list[str] = []
        for tag in tags:
            written = self.written.get(tag)
            out.append(written.render() if written else escape(tag))
            out.extend(self.markers_after.get(tag, ()))
        return out

    def extra_networks(self) -> list[str]:
        found = [m for ms in self.markers_after.values() for m in ms if m != BREAK]
        return found + list(self.nl.markers)


@dataclass(frozen=True)
class UserInput:
    """The user's prompt, parsed: clean tags by category (de-duplicated, in the user's order),
    the clean sentence, and how both were written."""

    tags: Tags
    nl: str
    style: UserStyle

    @classmethod
    def parse(cls, tags: str, nl: str, db: TagDatabase) -> UserInput:
        user, sentence = parse_tag_prompt(tags), parse_nl_prompt(nl)
        classified = db.classify(user.clean_tags)
        for category, values in classified.items():
            classified[category] = dedupe(values)
        return cls(classified, sentence.text, UserStyle.of(user, sentence, db))

    def render(self, template: Template) -> str:
        """The user's own prompt laid out by ``template``, with nothing generated."""
        return render_prompt(template, self.tags, self.nl, "", self.style)


def render_prompt(
    template: Template, tags: Tags, extended: str, generated: str, style: UserStyle
) -> str:
    tags = template.complete(tags)
    values: dict[str, list[str] | str] = {c.value: style.render_tags(t) for c, t in tags.items()}
    values["extended"] = style.nl.render(extended)
    values["generated"] = escape(generated)
    prompt = template.format(values)
    leading = [m for m in style.markers_after.get(None, ()) if m != BREAK]
    if leading:
        prompt = f"{', '.join(leading)}, {prompt}" if prompt else ", ".join(leading)
    # A template without the slot of a tag must not drop the user's LoRAs with it.
    missing = [m for m in style.extra_networks() if m not in prompt]
    return f"{prompt}\n{' '.join(missing)}".strip() if missing else prompt


__all__ = ["UserInput", "UserStyle", "render_prompt"]
