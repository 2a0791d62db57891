"""``modules.scripts`` as a script sees it: the base class, AlwaysVisible, OnComponent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

AlwaysVisible = object()


@dataclass
class OnComponent:
    component: Any


class Script:
    """The hooks an always-visible script may define; the defaults do nothing."""

    filename: str | None = None
    infotext_fields: list | None = None
    paste_field_names: list | None = None
    on_after_component_elem_id: list | None = None
    is_txt2img = False
    is_img2img = False

    def title(self) -> str:
        raise NotImplementedError

    def show(self, is_img2img: bool) -> Any:
        return True

    def ui(self, is_img2img: bool) -> list:
        return []

    def before_process(self, p: Any, *args: Any) -> None:
        pass

    def process(self, p: Any, *args: Any) -> None:
        pass

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass


def basedir() -> str:
    return os.getcwd()
