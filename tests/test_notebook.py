"""The tutorial notebook runs from top to bottom (on a tiny configuration, so that CI keeps it from rotting)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FASHION_MNIST_DIR, REPO

nbclient = pytest.importorskip("nbclient", reason="the test extra's notebook runner")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel", reason="the notebook's kernel")

NOTEBOOK = REPO / "notebooks" / "tutorial.ipynb"


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="the tutorial trains on the real Fashion-MNIST (Debian's dataset-fashion-mnist)")
def test_the_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMKIT_TUTORIAL_TINY", "1")
    monkeypatch.setenv("DDPMKIT_TUTORIAL_DIR", str(tmp_path / "run"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = ("image/png", "image/jpeg", "image/gif")
    figures = [o for o in outputs if o.output_type == "display_data" and set(pictures) & set(o.get("data", {}))]
    assert len(figures) >= 12  # loss, 7 samplers, 3 guidance grids, the strip (and the GIF)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "fd_fashion_mnist_classifier" in text and "| accuracy |" in text  # measured, and in the model card
    assert (tmp_path / "run" / "exported" / "unet" / "config.json").is_file()


def test_the_committed_notebook_has_no_outputs():
    # Outputs are made by running it; committed ones would be stale pictures and a diff on every run.
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    assert Path(NOTEBOOK).stat().st_size < 20_000
