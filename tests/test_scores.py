"""Quality scores in two feature spaces with bootstrap intervals (needs Fashion-MNIST and the shipped judge)."""
import numpy as np
import pytest
import torch

from fpdm_core.data import load_fashion_mnist
from fpdm_core.classifier import load_classifier
from fpdm_core.metrics import feature_stats, frechet_distance
from fpdm_core.scores import METRICS, build_reference, paired_differences, score, summarize

try:
    load_fashion_mnist("test")
except FileNotFoundError:
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)", allow_module_level=True)


@pytest.fixture(scope="module")
def setup():
    clf = load_classifier()
    ref = build_reference(clf, n_fd=600, n_pca=600, n_prdc=200)
    x, y = load_fashion_mnist("train")
    imgs, labels = x[-300:], y[-300:]  # real images the reference never saw
    noise = torch.randn(imgs.shape, generator=torch.Generator().manual_seed(0))
    noisy = (0.6 * imgs + 0.3 + 0.4 * noise).clamp(-1, 1)  # washed out and noisy
    return clf, ref, imgs, labels, noisy


def test_fcd_equals_the_numpy_frechet_distance(setup):
    clf, ref, imgs, labels, _ = setup
    s = summarize(score(imgs, labels, clf, ref), ref, n_boot=50)
    test, _ = load_fashion_mnist("test")
    expected = frechet_distance(*feature_stats(clf, imgs), *feature_stats(clf, test[:600]))
    assert s["fcd"]["value"] == pytest.approx(expected, rel=1e-6)
    terms = s["diagnostics"]["fd_terms"]["fcd"]
    assert terms["mean"] + terms["covariance"] == pytest.approx(expected, rel=1e-6)


def test_real_images_beat_noisy_ones_on_every_metric(setup):
    clf, ref, imgs, labels, noisy = setup
    real, bad = score(imgs, labels, clf, ref), score(noisy, labels, clf, ref)
    sr, sb = summarize(real, ref, n_boot=100), summarize(bad, ref, n_boot=100)
    assert set(METRICS) <= set(sr)
    for name, info in METRICS.items():
        v = sr[name]
        assert v["lo"] <= v["value"] <= v["hi"], name  # intervals are centred on the estimate
        better = sr[name]["value"] > sb[name]["value"] if info["higher_is_better"] else sr[name]["value"] < sb[name]["value"]
        assert better, (name, sr[name], sb[name])
    assert sr["accuracy"]["value"] > 0.8 and sr["precision"]["value"] > 0.6
    diff = paired_differences(real, bad, ref, n_boot=100)
    assert diff["accuracy"]["lo"] > 0 and diff["fd_pixel"]["hi"] < 0  # the interval excludes zero
    assert sr["diagnostics"]["brightness"]["samples"] < sb["diagnostics"]["brightness"]["samples"]  # washed out


def test_identical_sets_have_a_zero_paired_difference_and_labels_must_match(setup):
    clf, ref, imgs, labels, _ = setup
    s = score(imgs, labels, clf, ref)
    diff = paired_differences(s, s, ref, n_boot=20)
    assert all(d["value"] == d["lo"] == d["hi"] == 0 for d in diff.values())
    other = score(imgs, labels.roll(1), clf, ref)
    with pytest.raises(ValueError, match="same labels"):
        paired_differences(s, other, ref, n_boot=20)
    with pytest.raises(ValueError, match="N labels"):
        score(imgs, labels[:-1], clf, ref)


def test_per_class_accuracy_matches_a_direct_count(setup):
    clf, ref, imgs, labels, _ = setup
    s = score(imgs, labels, clf, ref)
    per_class = summarize(s, ref, n_boot=10)["diagnostics"]["per_class_accuracy"]
    pred = clf(imgs).argmax(1)
    for c, acc in enumerate(per_class):
        mask = labels == c
        assert acc == pytest.approx(float((pred[mask] == c).double().mean()), abs=1e-12)
    assert np.isclose(np.average(per_class, weights=np.bincount(labels, minlength=10)),
                      summarize(s, ref, n_boot=10)["accuracy"]["value"])
