"""The learning rate as a pure function of the step, and its re-basing when a resumed run changes train.steps."""
import math

import pytest

from ddpmkit.config import TrainConfig
from ddpmkit.lr_schedule import LearningRate


def test_warmup_then_cosine():
    lr = LearningRate.fresh(TrainConfig(steps=1100, lr=1e-3, warmup_steps=100, min_lr_ratio=0.1))
    assert lr(0) == pytest.approx(1e-5)
    assert lr(99) == pytest.approx(1e-3)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(600) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert lr(1100) == pytest.approx(1e-4)


@pytest.mark.parametrize("resume_step, new_steps", [(50_000, 100_000), (20_000, 100_000), (20_000, 30_000)])
def test_a_changed_step_count_continues_from_the_rate_reached(resume_step, new_steps):
    old = TrainConfig(steps=50_000, lr=2e-4, warmup_steps=1000, min_lr_ratio=0.1)
    new = TrainConfig(steps=new_steps, lr=2e-4, warmup_steps=1000, min_lr_ratio=0.1)
    before = LearningRate.fresh(old)
    after = before.resumed(resume_step, new)
    # No jump: the rate just before the resume step and at it lie on one curve (a cosine step is tiny).
    assert after(resume_step) == pytest.approx(before(resume_step), rel=1e-9)
    assert abs(after(resume_step + 1) - before(resume_step - 1)) < 1e-3 * before(resume_step)
    assert after(new_steps) == pytest.approx(2e-4 * 0.1)  # and it still ends at min_lr_ratio
    # Between, a cosine from the rate reached to the minimum: half-way, the average of the two.
    middle = (resume_step + new_steps) // 2
    assert after(middle) == pytest.approx((before(resume_step) + 2e-4 * 0.1) / 2, rel=1e-3)


def test_a_finished_run_extended_goes_on_at_its_final_rate():
    # The defect: the cosine is a function of train.steps, so 50k -> 100k jumped from 0.1 to about 0.55 of lr.
    old = TrainConfig(steps=50_000, lr=2e-4, warmup_steps=1000, min_lr_ratio=0.1)
    new = TrainConfig(steps=100_000, lr=2e-4, warmup_steps=1000, min_lr_ratio=0.1)
    assert LearningRate.fresh(new)(50_000) > 0.5 * 2e-4  # what a schedule of the new length alone would give
    after = LearningRate.fresh(old).resumed(50_000, new)
    assert all(after(s) == pytest.approx(2e-5) for s in (50_000, 75_000, 100_000))


def test_the_rebasing_survives_the_checkpoint_and_later_resumes():
    t1 = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
    t2 = TrainConfig(steps=200, lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
    rebased = LearningRate.fresh(t1).resumed(60, t2)
    again = LearningRate.from_state(rebased.state_dict(), t2).resumed(120, t2)  # resumed again, same steps
    assert again == rebased
    assert again(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 90)))


def test_a_new_peak_scales_the_curve_and_a_change_during_warmup_moves_only_the_end():
    t = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
    halved = LearningRate.fresh(t).resumed(50, TrainConfig(steps=100, lr=0.5, warmup_steps=10, min_lr_ratio=0.0))
    assert halved(70) == pytest.approx(0.5 * LearningRate.fresh(t)(70))
    longer = TrainConfig(steps=200, lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
    assert LearningRate.fresh(t).resumed(5, longer) == LearningRate.fresh(longer)
