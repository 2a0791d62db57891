"""ComfyUI entry point: clone this repository into ``ComfyUI/custom_nodes/`` and restart
ComfyUI. The nodes live in ``src/tipo/hosts/comfyui.py``; importing them loads no model, runs
no pip and touches no network. Models go in ``ComfyUI/models/kgen``."""

import os
import sys

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SOURCE not in sys.path:
    sys.path.insert(0, _SOURCE)

try:
    import folder_paths  # noqa: F401  (ComfyUI's own module: present only inside ComfyUI)
except ImportError:  # imported by another program (pytest collecting this folder): no nodes
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from tipo.hosts.comfyui import comfyui_runtime, node_mappings

    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = node_mappings(comfyui_runtime())

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
