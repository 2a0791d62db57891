"""Load ``scripts/tipo.py`` the way the WebUI does, against the contract harness's
``modules`` package (see README.md: a stand-in written from the documented API, not A1111)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
SCRIPT = REPOSITORY / "scripts" / "tipo.py"


def load_script(models_dir: Path) -> ModuleType:
    """Import scripts/tipo.py as the WebUI does (by file path, as a fresh module), with the
    WebUI's model folder at ``models_dir``."""
    os.environ["WEBUI_CONTRACT_MODELS"] = str(models_dir)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        del sys.modules[name]  # a fresh WebUI: models_path is read at import
    spec = importlib.util.spec_from_file_location("tipo_webui_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
