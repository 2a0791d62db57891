"""SD-WebUI and Forge run this file at start-up: it installs what the TIPO script needs and
the WebUI may lack (requirements.txt: gguf and sentencepiece, usually), as prebuilt wheels
from PyPI only. Nothing is compiled or fetched from GitHub, and a failure is reported, never
fatal: the script then says which package is missing when it is used."""

import os
import re

import launch

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")


def requirements() -> list[tuple[str, str]]:
    """(distribution name, requirement) of each line of requirements.txt."""
    found = []
    with open(REQUIREMENTS, encoding="utf-8") as file:
        for line in file:
            requirement = line.split("#", 1)[0].strip()
            name = re.match(r"[A-Za-z0-9._-]+", requirement)
            if name:
                found.append((name.group(), requirement))
    return found


for name, requirement in requirements():
    if launch.is_installed(name):
        continue
    try:
        launch.run_pip(f'install --only-binary=:all: "{requirement}"', f"{requirement} for TIPO")
    except Exception as error:  # the WebUI must start anyway
        print(f"TIPO: could not install {requirement}: {error}")
        print(f'TIPO: install it into the WebUI\'s Python with: pip install "{requirement}"')
