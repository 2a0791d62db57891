"""``InputAccordion`` (WebUI 1.7+, Forge): an accordion whose label holds a checkbox. It is
the checkbox (its value is the script's first argument); ``with`` it fills the accordion."""

from __future__ import annotations

from typing import Any

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value: bool, **kwargs: Any) -> None:
        label = kwargs.get("label", "Accordion")
        super().__init__(value=value, label=label, elem_id=kwargs.get("elem_id"), visible=False)
        self.accordion = gr.Accordion(label=label, open=kwargs.get("open", False))

    def __enter__(self) -> InputAccordion:
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.accordion.__exit__(*exc)
