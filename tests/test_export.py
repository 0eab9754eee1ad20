"""``ddpmkit export``'s model card: what it says about the model, the measured metrics, the training command."""
from __future__ import annotations

import json
import shutil

import pytest

from ddpmkit.checkpoint import load_checkpoint, save_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import resolve_config
from ddpmkit.errors import DdpmkitError
from ddpmkit.export import export

ModelCard = pytest.importorskip("huggingface_hub", reason="the Hub's own card parser checks the card").ModelCard


@pytest.fixture
def run_dir(tiny_conditional_checkpoint, tmp_path):
    """A copy of the tiny conditional run (so that evaluations written into it stay in this test)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_conditional_checkpoint, run / "final.pt")
    return run


def evaluate_into(run, tiny_idx_root, tiny_judge, output) -> dict:
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "20", "--sampler", "ddim", "--steps", "2",
                 "--metrics", "fd,is", "--data-root", str(tiny_idx_root), "--classifier", str(tiny_judge),
                 "--no-cache", "--output-dir", str(output), "--no-progress"]) == 0
    return json.loads((output / "metrics.json").read_text())


def test_the_model_card_quotes_the_metrics_measured_on_the_exported_checkpoint(run_dir, tiny_idx_root, tiny_judge,
                                                                              tmp_path):
    report = evaluate_into(run_dir, tiny_idx_root, tiny_judge, run_dir / "evaluation")
    export(run_dir, tmp_path / "hub")
    text = (tmp_path / "hub" / "README.md").read_text()
    card = ModelCard(text)  # the Hub's parser: the YAML header is valid and says what the model is
    assert card.data.library_name == "diffusers" and "ddpmkit" in card.data.tags
    assert card.data.datasets == ["ylecun/mnist"]
    fd = report["metrics"]["fd_mnist_classifier"]
    assert f"| fd_mnist_classifier | {fd:.4f} | ddim | 2 | 0 | 20 | 16 mnist test images |" in text
    state = load_checkpoint(run_dir)
    steps, batch = state["step"], state["config"]["train"]["batch_size"]
    assert f"{steps:,} optimizer steps of {batch} images: {steps * batch:,} training images seen" in text
    assert "ddpmkit train --config training_config.json" in text and "MNIST" in text


def test_the_training_config_retrains_the_same_model(run_dir, tmp_path):
    export(run_dir, tmp_path / "hub")
    again = resolve_config(config_file=tmp_path / "hub" / "training_config.json")
    assert again.to_dict() == load_checkpoint(run_dir)["config"]


def test_metrics_of_another_checkpoint_are_refused_and_others_ignored(run_dir, tiny_idx_root, tiny_judge, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    state_file = other / "final.pt"
    state = load_checkpoint(run_dir)
    state["step"] += 1  # another checkpoint: another file, another hash
    save_checkpoint({k: v for k, v in state.items() if k != "sha256"}, state_file)
    evaluate_into(other, tiny_idx_root, tiny_judge, other / "evaluation")
    with pytest.raises(DdpmkitError, match="measured another checkpoint"):
        export(run_dir, tmp_path / "hub", metrics=[other / "evaluation" / "metrics.json"])
    (run_dir / "evaluation").mkdir()
    shutil.copy(other / "evaluation" / "metrics.json", run_dir / "evaluation" / "metrics.json")
    export(run_dir, tmp_path / "hub")  # found beside the checkpoint, but of another file: left out
    assert "Not measured when this folder was written" in (tmp_path / "hub" / "README.md").read_text()


def test_an_unconditional_card_shows_diffusers_pipeline_use(tiny_idx_root, tmp_path):
    from test_formats_diffusers import random_checkpoint

    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt")
    export(checkpoint, tmp_path / "hub")
    text = (tmp_path / "hub" / "README.md").read_text()
    assert 'DDPMPipeline.from_pretrained("PATH_OR_HUB_ID")' in text and "num_inference_steps=10" in text
    assert "unconditional-image-generation" in ModelCard(text).data.tags


def python_snippet(card: str, folder) -> str:
    """The card's diffusers example, pointed at ``folder``."""
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    return code.replace("PATH_OR_HUB_ID", str(folder))


def test_the_cards_diffusers_example_draws_ddpmkits_guided_samples(run_dir, tmp_path):
    import torch

    from ddpmkit.sampling import DiffusionSampler

    export(run_dir, tmp_path / "hub")
    code = python_snippet((tmp_path / "hub" / "README.md").read_text(), tmp_path / "hub")
    torch.manual_seed(123)
    scope: dict = {}
    exec(code, scope)  # the example as a user would paste it
    sampler = DiffusionSampler(run_dir, device="cpu", precision="fp32")
    torch.manual_seed(123)
    labels = torch.arange(len(sampler.class_names))
    x_T = torch.randn(len(labels), *sampler.image_shape)
    steps = min(50, sampler.schedule.num_timesteps)
    expected = sampler.to_images(sampler.run(x_T, labels=labels, guidance=1.0, sampler="ddim", steps=steps,
                                             progress=False))
    torch.testing.assert_close(scope["images"], expected, atol=1e-4, rtol=0)


def test_the_unconditional_cards_pipeline_example_runs(tiny_idx_root, tmp_path):
    from test_formats_diffusers import random_checkpoint

    export(random_checkpoint(tiny_idx_root, tmp_path / "model.pt"), tmp_path / "hub")
    scope: dict = {}
    exec(python_snippet((tmp_path / "hub" / "README.md").read_text(), tmp_path / "hub"), scope)
    assert len(scope["images"]) == 16 and scope["images"][0].size == (8, 8)


def test_the_card_names_the_ema_that_training_used(tiny_idx_root, tmp_path):
    from test_formats_diffusers import random_checkpoint

    checkpoint = random_checkpoint(tiny_idx_root, tmp_path / "model.pt")
    state = load_checkpoint(checkpoint)
    state["config"]["train"]["ema_halflife_images"] = 5000  # training then ignores ema_decay (ema.decay_for_halflife)
    save_checkpoint({k: v for k, v in state.items() if k != "sha256"}, checkpoint)
    export(checkpoint, tmp_path / "hub")
    text = (tmp_path / "hub" / "README.md").read_text()
    assert "half-life 5,000 training images" in text and "decay 0.9" not in text
    assert text.count("# An unconditional DDPM of MNIST") == 1
    export(checkpoint, tmp_path / "raw", use_ema=False)
    raw = (tmp_path / "raw" / "README.md").read_text()
    assert "the trained weights themselves" in raw and "this folder holds the raw ones" in raw
    with pytest.raises(DdpmkitError, match="--metrics with --no-ema"):
        export(checkpoint, tmp_path / "raw2", use_ema=False, metrics=[tmp_path / "m.json"])
