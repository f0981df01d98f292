"""The Fréchet distance against closed forms, and eval_fid's table on a toy DDPM run."""

from __future__ import annotations

import json

import pytest
import torch

from nerfx import fid


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """Commuting (diagonal) covariances: d² = |μ₁−μ₂|² + Σ (√a − √b)²."""
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    want = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    got = fid.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(want.item(), rel=1e-9)
    # Rotating both covariances the same way changes nothing.
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rot = lambda s: q @ torch.diag(s).double() @ q.T  # noqa: E731
    assert fid.frechet_distance(mu1, rot(a), mu2, rot(b)) == pytest.approx(want.item(), rel=1e-6)


def test_spread_indices_sample_every_class_of_a_sorted_folder():
    """A folder's images come sorted by class: the images a distance uses are a seeded draw,
    not the first n (the first 100 of these 1000 would all be class 0)."""
    labels = torch.arange(1000) // 100  # [1000] ten classes, sorted
    chosen = fid.spread_indices(1000, 100)
    assert len(set(chosen.tolist())) == 100
    assert set(labels[chosen].tolist()) == set(range(10))
    assert torch.equal(chosen, fid.spread_indices(1000, 100))  # the same draw every time
    assert sorted(fid.spread_indices(5, 100).tolist()) == [0, 1, 2, 3, 4]


def test_same_set_is_zero_and_shifts_grow():
    x = torch.randn(500, 8, dtype=torch.float64)
    stats = (x.mean(0), torch.cov(x.T))
    assert fid.frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-8)
    shifted = x + 0.5
    assert fid.frechet_distance(shifted.mean(0), torch.cov(shifted.T), *stats) == \
        pytest.approx(8 * 0.25, rel=1e-6)


def test_score_samples_against_reference_statistics():
    """The distance of a batch to the statistics of the same images is 0; with the labels the
    batch was drawn for, the class accuracy is the classifier's agreement with them."""
    torch.manual_seed(0)
    net = fid.FeatureNet(1, 3).eval()
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    predicted = net(images).argmax(1)
    score = fid.score_samples(net, images, fid.statistics(net, images))
    assert score == {"frechet": pytest.approx(0.0, abs=1e-4)}
    labels = predicted.clone()
    labels[:10] = (labels[:10] + 1) % 3                         # a quarter named wrongly
    score = fid.score_samples(net, images, fid.statistics(net, images.flip(-1)), labels)
    assert score["class_accuracy"] == fid.class_accuracy(net, images, labels) == 0.75
    assert score["frechet"] > 1e-4                            # mirrored: other statistics
    labels = torch.arange(40) % 3
    per_class = fid.per_class_accuracy(net, images, labels, 4)
    for c in range(3):                      # the share of class c's images named c
        mine = labels == c
        assert per_class[c] == pytest.approx(float((predicted[mine] == c).float().mean()),
                                             abs=1e-4)
    assert per_class[3] is None             # no images of class 3


@pytest.mark.slow
def test_eval_fid_writes_the_table(tmp_path, monkeypatch):
    from nerfx import eval_fid, train, trainers
    from tests.trainers.test_image_trainers import TOY

    monkeypatch.setenv("NERFX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(trainers.trainer_modules()["ddpm"].PRESETS, "cpu-fast", TOY["ddpm"])
    monkeypatch.setattr(fid, "train_feature_net",
                        lambda data, **kw: fid.FeatureNet(data.channels, len(data.classes)).eval())
    run = tmp_path / "run"
    train.main(["--model", "ddpm", "--data", "shapes", "--fast", "--device", "cpu",
                "--out", str(run)])
    table = eval_fid.main([str(run), "--steps", "2,3", "--eta", "0,1", "--n", "8",
                           "--no-ddpm", "--device", "cpu", "--backend", "torch"])
    assert table["backends"] == {"attention": "torch"}
    assert set(table["ddim"]) == {"S=2, eta=0", "S=2, eta=1", "S=3, eta=0", "S=3, eta=1"}
    # Samples of a 4-step model are farther from the test images than training images are.
    assert all(v > table["floor (train vs test images)"] for v in table["ddim"].values())
    assert json.loads((run / "fid.json").read_text()) == table
    assert 0 <= table["classifier test accuracy"] <= 1
    assert "classifier names" in (run / "fid.md").read_text()
    assert "| 3 |" in (run / "fid.md").read_text()
    assert list((tmp_path / "cache" / "fid").glob("featurenet-*.pt"))
    with pytest.raises(SystemExit, match="not a nerfx run folder"):
        eval_fid.main([str(tmp_path / "nothing")])


def test_the_judge_is_trained_with_the_flips_its_data_allows(tmp_path, monkeypatch):
    """feature_net_for passes the dataset's augmentation (shapes: both flips) and caches under a
    key with the judge's version, so a change of its training retrains it."""
    calls = []

    def fake(data, **kw):
        calls.append(kw)
        return fid.FeatureNet(data.channels, len(data.classes)).eval()

    monkeypatch.setattr(fid, "train_feature_net", fake)
    fid.feature_net_for("shapes", 8, tmp_path, seed=0)
    fid.feature_net_for("shapes", 8, tmp_path, seed=0)                # cached: not trained again
    assert len(calls) == 1
    assert (calls[0]["augmentation"].flip_x, calls[0]["augmentation"].flip_y) == (True, True)
    monkeypatch.setattr(fid, "JUDGE_VERSION", fid.JUDGE_VERSION + 1)
    fid.feature_net_for("shapes", 8, tmp_path, seed=0)
    assert len(calls) == 2


def test_train_feature_net_learns_a_toy_task():
    """A few steps of the judge's training on two separable classes (bright and dark)."""
    from nerfx.data import ImageDataset
    from nerfx.data.augment import augmentation_for

    labels = torch.arange(64) % 2                                        # [64]
    images = (labels[:, None, None, None] * 200 + torch.randint(0, 40, (64, 1, 8, 8)))
    data = ImageDataset(images.to(torch.uint8), labels, ("dark", "bright"))
    net = fid.train_feature_net(data, steps=30, batch_size=16,
                                augmentation=augmentation_for("folder:x"))
    assert fid.class_accuracy(net, data.as_float(), labels) == 1.0


@pytest.mark.slow
def test_eval_fid_adds_ddpm_ancestral_row(tmp_path, monkeypatch):
    """Without --no-ddpm the table has DDPM's row: ancestral sampling through all T steps
    (here the run's model on a 10-step schedule, to keep the test short)."""
    from nerfx import eval_fid, train, trainers
    from nerfx.models.ddpm import DiffusionConfig, GaussianDiffusion
    from tests.trainers.test_image_trainers import TOY

    monkeypatch.setenv("NERFX_CACHE", str(tmp_path / "cache"))
    module = trainers.trainer_modules()["ddpm"]
    monkeypatch.setitem(module.PRESETS, "cpu-fast", TOY["ddpm"])
    monkeypatch.setattr(fid, "train_feature_net",
                        lambda data, **kw: fid.FeatureNet(data.channels, len(data.classes)).eval())
    load_trained = module.load_trained

    def on_ten_steps(*args):
        model, _ = load_trained(*args)
        return model, GaussianDiffusion(DiffusionConfig(timesteps=10))

    monkeypatch.setattr(module, "load_trained", on_ten_steps)
    run = tmp_path / "run"
    train.main(["--model", "ddpm", "--data", "shapes", "--fast", "--device", "cpu",
                "--out", str(run)])
    table = eval_fid.main([str(run), "--steps", "2", "--eta", "0", "--n", "8", "--device", "cpu"])
    assert table["ddpm (T=10)"] > table["floor (train vs test images)"]
    assert "ddpm (T=10)" in (run / "fid.md").read_text()
