"""The WebUI's model folder; the harness points it at a temporary folder."""

import os

models_path = os.environ.get("WEBUI_CONTRACT_MODELS", os.path.join(os.getcwd(), "models"))
