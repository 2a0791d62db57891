"""TIPO inside image-generation front ends.

``reference.py`` maps the inputs and outputs of the reference extension (z-tipo-extension)
onto our API; ``models.py`` finds a host's model names on disk and keeps loaded models;
``comfyui.py`` holds the ComfyUI nodes and ``webui.py`` the SD-WebUI/Forge script's logic
(``scripts/tipo.py`` at the repository root is the script itself). Nothing here imports a host
at import time: each host's modules are imported by the host.
"""
