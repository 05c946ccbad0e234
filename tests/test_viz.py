"""sf.viz and the command figures: signed maps on a diverging colormap centred at 0, unsigned on a
sequential one, overlays transparent where there is no attribution; the train command's help and
its warm-up warning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import saliency_fast as sf
from saliency_fast.cli import build_parser
from saliency_fast.commands.train import METHOD_FLAGS, schedule_warnings
from saliency_fast.train import OBJECTIVES, SCAAT, PGDAT


def test_viz_is_an_attribute_of_the_package():
    assert sf.viz.heatmap_grid is not None and sf.interop.quantus_explain is not None


def test_signed_maps_keep_zero_and_sign_unsigned_span_zero_to_one():
    maps = torch.tensor([[[-2.0, 0.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    assert sf.viz.is_signed(maps) and not sf.viz.is_signed(maps.abs())
    signed = sf.viz.scaled(maps, signed=True)
    assert torch.equal(signed[0], torch.tensor([[-1.0, 0.0], [0.5, 0.25]]))  # 0 stays 0, sign kept
    assert torch.equal(signed[1], torch.zeros(2, 2))  # an all-zero map stays 0, no NaN
    unsigned = sf.viz.scaled(maps.abs(), signed=False)
    assert torch.equal(unsigned[0], torch.tensor([[1.0, 0.0], [0.5, 0.25]]))
    per_channel = sf.viz.scaled(torch.ones(1, 3, 2, 2), signed=False)  # (B, C, H, W) summed over channels
    assert per_channel.shape == (1, 2, 2)


def test_overlay_is_transparent_without_attribution_red_supports_blue_opposes():
    rgba = sf.viz.overlay_rgba(np.array([[-1.0, 0.0, 1.0]]), signed=True)
    assert rgba[0, 1, 3] == 0.0 and rgba[0, 0, 3] == rgba[0, 2, 3] == pytest.approx(sf.viz.OVERLAY_ALPHA)
    blue, white, red = rgba[0, 0, :3], rgba[0, 1, :3], rgba[0, 2, :3]
    assert blue[2] > blue[0] and red[0] > red[2] and white.min() > 0.9


def test_heatmap_grid_draws_what_it_is_given(tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    images = torch.zeros(2, 1, 4, 4)
    signed = torch.zeros(2, 4, 4)
    signed[:, 0, 0], signed[:, 3, 3] = 1.0, -1.0
    path = sf.viz.heatmap_grid(images, {"signed": signed}, str(tmp_path / "grid.png"), overlay=False,
                               titles=["a", "b"], title="t", note="n")
    picture = matplotlib_image.imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 100
    colours = picture[..., :3].reshape(-1, 3)
    reds = ((colours[:, 0] > 0.35) & (colours[:, 2] < 0.25)).sum()
    blues = ((colours[:, 2] > 0.35) & (colours[:, 0] < 0.25)).sum()
    assert reds > 50 and blues > 50  # the +1 and −1 pixels (and the colour bar) are drawn red and blue


def test_train_help_lists_every_method_and_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for name in OBJECTIVES:
        assert f"\n  {name} " in text, name
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    helps = {action.dest: action.help for action in train._actions}
    assert all(helps[name] for name in METHOD_FLAGS), [name for name in METHOD_FLAGS if not helps[name]]


def test_a_warm_up_longer_than_the_run_is_reported():
    assert "trains plainly" in schedule_warnings(SCAAT(), 1)[0]  # warmup_epochs defaults to 2
    assert "trains plainly" in schedule_warnings(SCAAT(), 2)[0]
    assert schedule_warnings(SCAAT(), 3) == []  # 2 warm-up epochs + a 1-epoch ramp
    assert "never reaches" in schedule_warnings(SCAAT(ramp_epochs=5), 4)[0]
    assert schedule_warnings(PGDAT(), 1) == [] and schedule_warnings(OBJECTIVES["plain"](), 1) == []


def test_demo_marks_completeness_that_does_not_apply():
    from saliency_fast.commands.demo import format_table

    table = format_table([("gradient", float("nan"), 1, 1, 0.1), ("SAMP", 0.25, 30, 30, 1.0)])
    gradient_row = next(line for line in table.splitlines() if line.startswith("gradient"))
    assert "—" in gradient_row and "nan" not in table and "0.2500" in table
