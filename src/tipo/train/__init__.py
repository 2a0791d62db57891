"""Training TIPO models: ``tipo train`` (one process or torchrun), ``tipo export``.

Reading order: config.py (every setting), batches.py (which samples each process trains on at
each step), trainer.py (the loop on torch.distributed), run_folder.py (checkpoints), model.py
(transformers' LlamaForCausalLM, presets, LoRA), export.py and hf_folder.py (the Hugging Face
folder). Needs the ``train`` extra (transformers, peft for LoRA, datasets, tensorboard); the
samples themselves come from ``tipo.data``.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "make_config": "config",
    "read_config_file": "config",
    "Trainer": "trainer",
    "train": "trainer",
    "export_checkpoint": "export",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
