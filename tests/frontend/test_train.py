"""Synthetic scenes, the short training loop, its metrics, and the trained-model cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import m3c.frontend.models.train as train_module
from m3c.frontend.models import preset
from m3c.frontend.models.data import make_dataset
from m3c.frontend.models.train import f1_score, load_or_train, mean_iou, train_synthetic

FIXTURE_STEPS = 1000  # a third of the default; at 600 depth is still mid-descent for some seeds


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(2)
    return train_synthetic("micro-nyud", steps=FIXTURE_STEPS, seed=0, quiet=True)


def test_dataset_is_deterministic_with_the_documented_shapes():
    config = preset("micro-pascal")
    first, again, other = (make_dataset(config, 6, seed) for seed in (3, 3, 4))
    h, w = config.image_size
    assert set(first) == {"image", *config.tasks}
    for name, array in first.items():
        np.testing.assert_array_equal(array, again[name])
        assert not np.array_equal(array, other[name]) or name == "human_parts"
    assert first["image"].shape == (6, 3, h, w) and first["image"].dtype == np.float32
    assert first["semseg"].shape == (6, h, w) and first["semseg"].dtype == np.int64
    assert 0 <= first["semseg"].min() and first["semseg"].max() < config.tasks["semseg"]
    assert first["human_parts"].max() < config.tasks["human_parts"]
    np.testing.assert_array_equal(first["sal"][:, 0], first["semseg"] > 0)
    np.testing.assert_allclose(np.linalg.norm(first["normals"], axis=1), 1.0, rtol=1e-5)
    assert first["edge"].shape == (6, 1, h, w) and set(np.unique(first["edge"])) == {0.0, 1.0}


def test_nyud_scenes_have_objects_in_front_of_the_background():
    data = make_dataset(preset("micro-nyud"), 8, seed=0)
    assert data["depth"].shape == (8, 1, 48, 64)
    objects = data["semseg"] > 0
    assert objects.any() and (~objects).any()
    assert data["depth"][:, 0][objects].mean() < data["depth"][:, 0][~objects].mean()


def test_mean_iou_on_a_hand_computed_case():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    assert mean_iou(target, target, 5) == 1.0
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    # class 0: 1 hit / 3 in the union; class 1: 2 / 3; class 2: 1 / 2; classes 3-4 absent
    assert mean_iou(pred, target, 5) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # positives (class > 0): predicted 4, true 4, both 3
    assert f1_score(pred > 0, target > 0) == pytest.approx(2 * 3 / 8)


def test_training_lowers_the_loss(trained):
    _, metrics = trained
    for task in ("semseg", "depth"):
        losses = metrics["losses"][task]
        assert losses["last"] < 0.5 * losses["first"], (task, losses)


def test_trained_model_beats_trivial_baselines_on_held_out_scenes(trained):
    _, metrics = trained
    semseg, depth = metrics["semseg"], metrics["depth"]
    assert semseg["miou"] > semseg["baseline_miou"] + 0.2, semseg
    assert semseg["pixel_acc"] > semseg["baseline_pixel_acc"] + 0.1, semseg
    assert depth["rmse"] < 0.8 * depth["baseline_rmse"], depth


def test_routing_after_training_depends_on_the_token(trained):
    model, metrics = trained
    routing = metrics["routing"]
    assert routing["top_k_mass"] > routing["uniform_top_k_mass"] + 0.1, routing
    image = torch.from_numpy(make_dataset(model.config, 4, seed=99)["image"])
    with torch.no_grad():
        model.backbone(image, 0)
    for layer in model.backbone.moe_layers():
        expert_sets = {tuple(sorted(row)) for row in layer.last_routing.tolist()}
        assert len(expert_sets) > 1  # not every token sent to the same experts
        used = torch.bincount(layer.last_routing.flatten(), minlength=layer.config.num_experts)
        assert (used > 0).all()  # the balance loss kept every expert in use
    for layers in routing["layers"].values():
        assert all(0.0 < entropy <= 1.0 for entropy in layers["load_entropy"])


def test_every_task_loss_runs_with_task_conditioned_routing():
    model, metrics = train_synthetic("micro-pascal", steps=12, gate="task", quiet=True)
    assert model.config.gate == "task" and not model.training
    assert set(metrics["losses"]) <= set(model.config.tasks) and len(metrics["losses"]) >= 3
    assert all(np.isfinite(v["first"]) for v in metrics["losses"].values())
    assert {"semseg", "human_parts", "routing"} <= set(metrics)


def test_cache_hit_returns_the_same_weights_without_training(tmp_path, monkeypatch, capsys):
    calls = []
    real = train_module.train_synthetic

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_synthetic", counting)
    monkeypatch.setenv("M3C_CACHE_DIR", str(tmp_path))
    first = load_or_train("micro-cityscapes", steps=5)
    assert "training" in capsys.readouterr().out
    second = load_or_train("micro-cityscapes", steps=5)
    assert "cached" in capsys.readouterr().out
    assert len(calls) == 1
    files = list((tmp_path / "trained").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pth"
    second_state = second.state_dict()
    assert set(first.state_dict()) == set(second_state)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second_state[name]), name
    load_or_train("micro-cityscapes", gate="task", steps=5, quiet=True)
    assert len(calls) == 2  # another gate is another model
