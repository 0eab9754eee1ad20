"""Progressive and consistency distillation (ddpmkit.distill): the progressive target against its defining property,
the student's grid and DDIM step against ddpmkit's own DDIM and Euler samplers, students of both methods distilled
from the exact Gaussian denoiser against the teacher's ODE solution, multistep consistency sampling against its
algorithm, guidance as the student's input, and `ddpmkit distill` end to end: rounds, resumption, sampling defaults,
guided targets, and what is refused."""
import json

import pytest
import torch

from ddpmkit.build import noise_schedule, run_sampler, sampler_options
from ddpmkit.checkpoint import read_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import config_from_dict
from ddpmkit.paths import DDPMPath, EDMPath, FlowPath, ddim_step
from ddpmkit.distill.progressive import ProgressiveLoss, two_step_target
from ddpmkit.distill.rounds import plan_rounds
from ddpmkit.distill.sampling import sample_consistency, sample_distilled
from ddpmkit.errors import DdpmkitError
from ddpmkit.objectives import EDM, RectifiedFlow
from ddpmkit.samplers.common import ImageNoise
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.train import train

from conftest import tiny_config_dict


def _paths():
    schedule = noise_schedule(config_from_dict({"diffusion": {"num_timesteps": 1000}}).diffusion)
    return {"ddpm": DDPMPath(schedule, "v"), "flow": FlowPath(RectifiedFlow(shift=3.0)), "edm": EDMPath(EDM())}


def _smooth_network(x, level, y=None):
    """A fixed, nonlinear stand-in network (any output kind works for these identities)."""
    level = level.float().reshape(-1, 1, 1, 1) / 1000
    return torch.tanh(0.7 * x + level) - 0.3 * x.roll(1, dims=-1)


@pytest.mark.parametrize("name", ["ddpm", "flow", "edm"])
def test_one_ddim_step_with_the_target_lands_on_the_teachers_two(name):
    # Eq. 8's defining property: the student's single DDIM step from z_t, with x~ as its x_0, ends where the teacher's
    # two DDIM steps end, at every step i of an N-step student.
    path, n = _paths()[name], 4
    for i in range(n):
        u = torch.full((3,), i / n, dtype=torch.float64)
        here, mid, end = path.alpha_sigma(u), path.alpha_sigma(u + 0.5 / n), path.alpha_sigma(u + 1 / n)
        z_t = path.start(torch.randn(3, 1, 4, 4, dtype=torch.float64)) if i == 0 else torch.randn(3, 1, 4, 4)
        z_t = z_t.double()
        z_mid = ddim_step(z_t, path.predict_x0(_smooth_network, z_t, u).double(), here, mid)
        z_end = ddim_step(z_mid, path.predict_x0(_smooth_network, z_mid, u + 0.5 / n).double(), mid, end)
        target = two_step_target(z_t, z_end, here, end)
        torch.testing.assert_close(ddim_step(z_t, target, here, end), z_end, atol=1e-9, rtol=1e-9)


def test_the_students_grid_and_step_are_ddpmkits_ddim_and_euler():
    # N distilled steps over the path's grid visit what ddpmkit's DDIM (trailing) and flow Euler visit with N steps,
    # and take their steps: the same images from the same noise.
    torch.manual_seed(1)
    x_T = torch.randn(2, 1, 4, 4)
    cfg = config_from_dict({"diffusion": {"prediction": "v", "clip_x0": False}})
    schedule = noise_schedule(cfg.diffusion)
    for steps in (1, 2, 8):
        ddim = run_sampler(cfg, "ddim", _smooth_network, schedule, x_T, steps=steps, progress=False,
                           ddpm_options=sampler_options(cfg, "ddim", steps, clip=False))
        distilled = sample_distilled(DDPMPath(schedule, "v"), _smooth_network, x_T, steps=steps, progress=False)
        torch.testing.assert_close(distilled, ddim, atol=2e-5, rtol=2e-5)
    flow_cfg = config_from_dict({"diffusion": {"objective": "flow"}})
    for steps in (1, 4):
        euler = run_sampler(flow_cfg, "euler", _smooth_network, schedule, x_T, steps=steps, progress=False)
        distilled = sample_distilled(FlowPath(RectifiedFlow()), _smooth_network, x_T, steps=steps, progress=False)
        torch.testing.assert_close(distilled, euler, atol=1e-5, rtol=1e-5)


class GaussianVelocity(torch.nn.Module):
    """A flow model whose velocity is exact for data N(mean, diag(std^2)): x_0 = E[x_0 | x_t] in closed form."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x, level, y=None):
        t = (level.double() / 1000).reshape(-1, 1, 1, 1)
        a, s = 1 - t, t
        x0 = self.mean + a * self.std**2 / (a**2 * self.std**2 + s**2) * (x - a * self.mean)
        return ((x - a * x0) / s - x0).float()  # v = eps - x_0


class AffineStudent(torch.nn.Module):
    """v = A_i x + c_i per pixel at grid point i: it can represent a DDIM map of Gaussian data exactly."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.scale = torch.nn.Parameter(torch.zeros(steps, 1, 1, 1, 4))
        self.shift = torch.nn.Parameter(torch.zeros(steps, 1, 1, 1, 4))

    def forward(self, x, level, y=None):
        u = 1 - level.double() / 1000  # flow with shift 1: t = 1 - u
        i = torch.round(u * self.steps).long().clamp(0, self.steps - 1)
        return self.scale[i].squeeze(1) * x + self.shift[i].squeeze(1)


def _fit(student, loss, mean, std, steps: int, decay: bool) -> None:
    """Adam on ``loss`` over fresh draws of Gaussian data N(mean, std^2), the learning rate decaying to 0 or not."""
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - k / steps if decay else 1.0)
    for _ in range(steps):
        x0 = mean + std * torch.randn(256, 1, 1, 4)
        value = loss(student, None, x0, None, torch.rand(256), torch.randn(256, 1, 1, 4))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        schedule.step()


def test_a_student_distilled_from_the_exact_gaussian_denoiser_takes_its_ode_solution_in_one_step():
    torch.manual_seed(0)
    mean, std = torch.tensor([0.5, -0.3, 0.1, 0.8]), torch.tensor([0.2, 0.6, 0.4, 0.1])
    path, teacher = FlowPath(RectifiedFlow()), GaussianVelocity(mean, std)
    network = teacher
    for student_steps in (8, 4, 2, 1):  # rounds, each student starting fresh (affine: the optimum is unique)
        student = AffineStudent(student_steps)
        loss = ProgressiveLoss(path, lambda z, u, y, w, net=network: path.predict_x0(net, z, u), student_steps)
        _fit(student, loss, mean, std, 400, decay=False)
        network = student.requires_grad_(False)
    noise = torch.randn(64, 1, 1, 4)
    with torch.no_grad():
        ode = sample_distilled(path, teacher, noise, steps=16, progress=False)
        one_step = sample_distilled(path, network, noise, steps=1, progress=False)
    assert (one_step - ode).abs().max() < 0.02 * ode.abs().max()
    # Against the exact ODE map (for independent Gaussian dimensions the monotone one, x_0 = mean + std * noise) the
    # student is as close as the teacher's 16 Euler steps are, no closer: it learned the teacher, not the data.
    exact = mean + std * noise
    assert (one_step - exact).abs().max() > 0.5 * (ode - exact).abs().max()


def test_rounds_halve_to_a_power_of_two_and_refuse_other_counts():
    assert plan_rounds(32, 4) == [16, 8, 4] and plan_rounds(2, 1) == [1]
    with pytest.raises(DdpmkitError, match="power of two"):
        plan_rounds(32, 3)
    with pytest.raises(DdpmkitError, match="--teacher-steps 24"):
        plan_rounds(24, 4)


@pytest.fixture(scope="module")
def flow_teacher(tiny_idx_root, tmp_path_factory):
    d = tiny_config_dict(tiny_idx_root)
    d["diffusion"] = {"objective": "flow"}
    d["model"]["class_conditional"] = True
    d["train"].update(steps=6, eval_every=0)
    return train(config_from_dict(d), tmp_path_factory.mktemp("flow_teacher"), progress=False)


def test_distill_trains_rounds_and_the_student_samples_in_its_steps(flow_teacher, tmp_path, capsys):
    run = tmp_path / "student"
    assert main(["distill", "--checkpoint", str(flow_teacher), "--steps", "2", "--teacher-steps", "8",
                 "--round-steps", "4", "--max-guidance", "1.5", "--run-dir", str(run), "--no-progress"]) == 0
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["round1_4steps", "round2_2steps"]
    student = DiffusionSampler(run / "final.pt", device="cpu")
    d = student.config.distill
    assert (d.method, d.student_steps, d.teacher_steps, d.max_guidance) == ("progressive", 2, 4, 1.5)
    assert student.model.spec.guidance_input
    assert d.teacher.endswith("round1_4steps/final.pt")
    assert student.count_steps() == 2  # the sampler and steps default to the student's own
    images = student.sample(3, labels=[0, 1, 0], progress=False)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    for call, message in [(lambda: student.sample(2, steps=5, progress=False), "2-step student"),
                          (lambda: student.sample(2, sampler="euler", progress=False), "--sampler distilled"),
                          (lambda: student.invert(images[:1], progress=False), "use its teacher")]:
        with pytest.raises(DdpmkitError, match=message):
            call()
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run), "--class", "all", "--num-samples", "1", "--no-progress",
                 "--output-dir", str(tmp_path / "s")]) == 0
    assert "(distilled)" in capsys.readouterr().out
    for command in (["strip", "--frames", "3", "--class", "1"], ["interpolate", "--points", "3"],
                    ["animate", "--per-class", "1", "--class", "0", "--frames", "3", "--output-dir", str(tmp_path / "g")]):
        output = [] if command[0] == "animate" else ["--output", str(tmp_path / f"{command[0]}.png")]
        assert main([*command, "--checkpoint", str(run), *output, "--no-progress"]) == 0, command
    record = json.loads((run / "distill.json").read_text())
    assert [r["student_steps"] for r in record["calls"][0]] == [4, 2]
    # Running it again finds every round trained and changes nothing.
    before = (run / "final.pt").stat().st_mtime_ns
    assert main(["distill", "--checkpoint", str(flow_teacher), "--steps", "2", "--teacher-steps", "8",
                 "--round-steps", "4", "--max-guidance", "1.5", "--run-dir", str(run), "--no-progress"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert torch.equal(DiffusionSampler(run / "final.pt", device="cpu").sample(2, progress=False),
                       student.sample(2, progress=False))
    assert (run / "final.pt").stat().st_mtime_ns >= before
    # A student continues its chain from its own steps; other starting steps are refused.
    assert main(["distill", "--checkpoint", str(run), "--steps", "1", "--round-steps", "2", "--run-dir",
                 str(tmp_path / "one"), "--no-progress"]) == 0
    assert DiffusionSampler(tmp_path / "one", device="cpu").config.distill.student_steps == 1
    assert main(["distill", "--checkpoint", str(run), "--steps", "1", "--teacher-steps", "8", "--run-dir",
                 str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "2-step student" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_the_first_round_starts_from_the_teachers_weights_and_targets_its_guided_steps(flow_teacher, tmp_path):
    from ddpmkit.distill.rounds import round_config, teacher_config
    from ddpmkit.distill.teacher import distillation_loss, load_teacher
    from ddpmkit.guidance import guided_denoiser

    settings = {"method": "progressive", "teacher": str(flow_teacher), "student_steps": 2, "teacher_steps": 4,
                "max_guidance": 1.5}
    cfg = round_config(teacher_config(flow_teacher), settings, 3, [])
    teacher = load_teacher(str(flow_teacher), torch.device("cpu"))
    loss = distillation_loss(cfg, teacher, torch.device("cpu"))
    z, y, w = torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0.3, 1.2])
    step = torch.tensor([0.0, 1.0], dtype=torch.float64)
    path = loss.path
    points = [path.alpha_sigma((step + k / 2) / 2) for k in range(3)]
    z_mid, z_end = [], []
    for i in range(2):  # each image guided with its own w, as guided_denoiser does for one w
        guided = guided_denoiser(teacher.model, y[i:i + 1], float(w[i]), teacher.model.spec.num_classes)
        at = [(a[i:i + 1], s[i:i + 1]) for a, s in points]
        mid = ddim_step(z[i:i + 1], path.predict_x0(guided, z[i:i + 1], step[i:i + 1] / 2), at[0], at[1])
        z_end.append(ddim_step(mid, path.predict_x0(guided, mid, (step[i:i + 1] + 0.5) / 2), at[1], at[2]))
    expected = two_step_target(z, torch.cat(z_end), points[0], points[2])
    torch.testing.assert_close(loss.target(z, step, y, w), expected, atol=1e-5, rtol=1e-5)
    run = tmp_path / "r"
    train(config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "steps": 1}}), run, stop_at=1,
          progress=False)
    state = read_checkpoint(run / "latest.pt")
    assert state["step"] == 1  # trained from the teacher's weights: one small step away from them
    first = next(iter(teacher.model.state_dict()))
    assert torch.allclose(state["model"][first], teacher.model.state_dict()[first], atol=1e-2)


def test_a_guidance_distilled_student_starts_as_its_teacher_for_every_w_and_samples_in_one_pass(flow_teacher):
    # Guidance as input (Meng et al. 2023): the student's w embedding starts at zero, so before training it is the
    # teacher's conditional model whatever w; sampling it with guidance w calls the network once per step, with w.
    from ddpmkit.distill.rounds import round_config, teacher_config
    from ddpmkit.train_state import TrainingState
    from ddpmkit.distill.teacher import load_teacher

    teacher = load_teacher(str(flow_teacher), torch.device("cpu"))
    settings = {"method": "consistency", "teacher": str(flow_teacher), "student_steps": 1, "teacher_steps": 2,
                "max_guidance": 2.0}
    cfg = round_config(teacher_config(flow_teacher), settings, 3, [])
    spec = type(teacher.model.spec)(**{**vars(teacher.model.spec), "guidance_input": True})
    state = TrainingState.new(cfg, spec, torch.device("cpu"), False, ["a", "b"])
    state.start_from(teacher.model)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900]), torch.tensor([0, 1, 0])
    with torch.no_grad():
        for w in (0.0, 0.7, 2.0):
            torch.testing.assert_close(state.model(x, t, y, guidance=torch.full((3,), w)), teacher.model(x, t, y))
    assert not torch.equal(state.model.guidance_mlp[0].weight, torch.zeros_like(state.model.guidance_mlp[0].weight))


def test_a_student_exports_to_safetensors_and_samples_the_same_but_a_flow_student_has_no_folder(flow_teacher,
                                                                                                 tmp_path, capsys):
    run = tmp_path / "student"
    assert main(["distill", "--checkpoint", str(flow_teacher), "--steps", "1", "--teacher-steps", "2",
                 "--round-steps", "2", "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(run), "--format", "safetensors", "--output",
                 str(tmp_path / "s.safetensors")]) == 0
    exported = DiffusionSampler(tmp_path / "s.safetensors", device="cpu")
    assert exported.family == "student" and exported.config.distill.student_steps == 1
    assert torch.equal(exported.sample(2, labels=[1, 0], progress=False),
                       DiffusionSampler(run, device="cpu").sample(2, labels=[1, 0], progress=False))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--output", str(tmp_path / "folder")]) == 2
    err = capsys.readouterr().err  # a flow student's steps are not FlowMatchEulerDiscreteScheduler's
    assert "FlowMatchEuler" in err and "--format safetensors" in err and not (tmp_path / "folder").exists()


def test_bad_distillation_input_gets_one_line(flow_teacher, tiny_conditional_checkpoint, tmp_path, capsys):
    for argv, message in [(["--steps", "3"], "power of two"),
                          (["--steps", "4", "--teacher-steps", "4"], "--teacher-steps 4"),
                          (["--max-guidance", "-1"], "--max-guidance")]:
        assert main(["distill", "--checkpoint", str(flow_teacher), *argv, "--run-dir", str(tmp_path / "x"),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_consistency_student_distilled_from_the_exact_gaussian_denoiser_takes_its_ode_solution_in_one_step():
    # Consistency distillation's fixed point is the map from every point of the teacher's N-step trajectories to
    # their end; for Gaussian data and the exact denoiser that map is affine, so an affine student reaches it, and
    # one evaluation from noise then lands where the teacher's N Euler steps do.
    from ddpmkit.distill.consistency import ConsistencyLoss

    torch.manual_seed(0)
    mean, std = torch.tensor([0.5, -0.3, 0.1, 0.8]), torch.tensor([0.2, 0.6, 0.4, 0.1])
    path, teacher = FlowPath(RectifiedFlow()), GaussianVelocity(mean, std)
    student = AffineStudent(8)
    for grid in (2, 4, 8):  # distill's rounds: ever finer teacher steps, the student carried over
        # Each level's target is the next level's prediction, so a finer grid takes more steps to settle.
        loss = ConsistencyLoss(path, lambda z, u, y, w: path.predict_x0(teacher, z, u), grid)
        _fit(student, loss, mean, std, 800, decay=True)
    noise = torch.randn(64, 1, 1, 4)
    with torch.no_grad():
        ode = sample_distilled(path, teacher, noise, steps=8, progress=False)
        one_step = sample_consistency(path, student, noise, steps=1, progress=False)
    assert (one_step - ode).abs().max() < 0.01 * ode.abs().max()
    # It learned the teacher's 8 Euler steps, not the data's exact ODE map (x_0 = mean + std * noise).
    exact = mean + std * noise
    assert (one_step - exact).abs().max() > 0.5 * (ode - exact).abs().max()


def test_multistep_consistency_sampling_renoises_each_estimate_with_the_images_own_seed():
    # Song et al. 2023, Algorithm 1: x_0 = f(z, 0); then z = alpha_u x_0 + sigma_u eps at u = 1/2 (for 2 steps),
    # eps drawn from the image's own generator after its starting noise, and x_0 = f(z, 1/2).
    path = _paths()["ddpm"]
    x_T = torch.randn(2, 1, 4, 4)
    seeds = [3, 4]
    noise = ImageNoise.from_seeds(seeds)
    drawn = sample_consistency(path, _smooth_network, x_T, steps=2, noise=noise, progress=False)
    eps = ImageNoise.from_seeds(seeds).randn(x_T.shape)
    half = torch.full((2,), 0.5, dtype=torch.float64)
    first = path.predict_x0(_smooth_network, x_T, torch.zeros(2, dtype=torch.float64)).float()
    alpha, sigma = path.alpha_sigma(half)
    z = alpha.float().reshape(-1, 1, 1, 1) * first + sigma.float().reshape(-1, 1, 1, 1) * eps
    torch.testing.assert_close(drawn, path.predict_x0(_smooth_network, z, half).float())
    one = sample_consistency(path, _smooth_network, x_T, steps=1, progress=False)
    torch.testing.assert_close(one, first)


def test_consistency_distillation_of_a_ddpm_teacher_end_to_end(tiny_conditional_checkpoint, tmp_path, capsys):
    run = tmp_path / "cd"
    argv = ["distill", "--checkpoint", str(tiny_conditional_checkpoint), "--method", "consistency", "--steps", "2",
            "--teacher-steps", "4", "--round-steps", "2", "--run-dir", str(run), "--no-progress"]
    assert main(argv) == 0
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["round1_grid2", "round2_grid4"]
    rounds = json.loads((run / "distill.json").read_text())["calls"][0]
    assert [r["teacher"] for r in rounds] == [str(tiny_conditional_checkpoint.resolve())] * 2  # one teacher
    assert rounds[0]["start"] == "" and rounds[1]["start"].endswith("round1_grid2/final.pt")
    student = DiffusionSampler(run, device="cpu")
    d = student.config.distill
    assert (d.method, d.student_steps, d.teacher_steps, d.max_guidance) == ("consistency", 2, 4, 2.0)
    assert student.count_steps() == 2
    for steps in (1, 3):  # multistep consistency sampling takes any number of steps
        assert student.count_steps(steps=steps) == steps
        assert torch.isfinite(student.sample(2, labels=[0, 1], steps=steps, guidance=1.5, progress=False)).all()
    # Guidance as input: one network pass per step at the batch's own size, w passed to the network.
    calls = []
    student.model.register_forward_hook(lambda module, args, kwargs, out: calls.append((len(args[0]),
                                        kwargs["guidance"].tolist())), with_kwargs=True)
    student.sample(3, labels=[0, 1, 0], guidance=1.5, progress=False)
    assert calls == [(3, [1.5] * 3)] * 2
    for call, message in [(lambda: student.sample(2, labels=[0, 1], guidance=2.5, progress=False), r"\[0, 2\]"),
                          (lambda: student.sample(2, steps=0, progress=False), "at least 1")]:
        with pytest.raises(DdpmkitError, match=message):
            call()
    capsys.readouterr()
    assert main(argv) == 0 and "already trained" in capsys.readouterr().out
    for method in ("consistency", "progressive"):  # a student is no teacher of another distillation
        assert main(["distill", "--checkpoint", str(run), "--method", method, "--run-dir", str(tmp_path / method),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "consistency student" in err and err.count("\n") == 1 and not (tmp_path / method).exists()


def test_a_progressive_ddpm_student_exports_to_a_folder_diffusers_ddim_draws_the_same(tiny_idx_root, tmp_path,
                                                                                      capsys):
    # A ddpm student's grid is DDIM's trailing timesteps at its K steps (test above), so diffusers' DDIMPipeline with
    # the exported DDIMScheduler draws its samples from the same noise; students it cannot step are refused.
    diffusers = pytest.importorskip("diffusers", reason="diffusers is the independent implementation checked here")
    import numpy as np

    d = tiny_config_dict(tiny_idx_root)
    d["train"].update(steps=4, eval_every=0)
    teacher = train(config_from_dict(d), tmp_path / "teacher", progress=False)
    run = tmp_path / "student"
    assert main(["distill", "--checkpoint", str(teacher), "--steps", "2", "--teacher-steps", "4", "--round-steps",
                 "2", "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(run), "--output", str(tmp_path / "folder")]) == 0
    seeds = [3, 1, 4]
    theirs = diffusers.DDIMPipeline.from_pretrained(tmp_path / "folder")(
        batch_size=3, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=2, eta=0.0,
        use_clipped_model_output=True, output_type="np").images
    ours = DiffusionSampler(run, device="cpu", precision="fp32").generate(seeds, progress=False)
    np.testing.assert_allclose(theirs, ours.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    back = DiffusionSampler(tmp_path / "folder", device="cpu")  # read back: still the 2-step student
    assert back.family == "student" and back.count_steps() == 2
    assert "num_inference_steps=2" in (tmp_path / "folder" / "README.md").read_text()
    consistency = tmp_path / "cd"
    assert main(["distill", "--checkpoint", str(teacher), "--method", "consistency", "--steps", "1",
                 "--teacher-steps", "2", "--round-steps", "1", "--run-dir", str(consistency), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(consistency), "--output", str(tmp_path / "cd_folder")]) == 2
    err = capsys.readouterr().err
    assert "consistency sampling" in err and err.count("\n") == 1 and not (tmp_path / "cd_folder").exists()
