"""cam.explain.verdict: the sentence from both networks' answers, the feature statistics behind "not sure", and the
Judge that reads a model's features (a tiny stand-in whose outputs the test sets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cam.core.catalog
import cam.models.checkpoints
from cam.explain.methods import Explainer
from cam.explain.pipeline import explain_image
from cam.explain.verdict import (
    CHOSEN,
    SCREEN_CUT,
    STATISTICS_LAYERS,
    Answer,
    FeatureReader,
    FeatureStats,
    Judge,
    fit_stats,
    layer_statistics,
    stats_path,
    verdict,
)
from cam.models.imagenet_net import Screen, Sighting, imagenet_names


def test_the_sentence_says_agree_disagree_or_not_sure() -> None:
    agree = verdict([Answer("VGG16", "dog", 0.88, 0.4), Answer("NoPool-GAP", "dog", 0.70, 0.9)])
    assert (agree.kind, agree.sentence) == ("agree", "Both networks say **dog** (VGG16 88%, NoPool-GAP 70%).")
    disagree = verdict([Answer("VGG16", "dog", 0.9, 0.2), Answer("NoPool-GAP", "cat", 0.6, 0.3)])
    assert (disagree.kind, disagree.sentence) == (
        "disagree", "The networks disagree: VGG16 says dog, NoPool-GAP says cat.")
    far = verdict([Answer("VGG16", "dog", 0.99, 3.0), Answer("NoPool-GAP", "dog", 0.95, 1.5)])
    assert far.kind == "not sure"
    assert far.sentence == ("**Not sure**: this picture looks unlike the photos the networks learned from; they know "
                            "only birds, cats, dogs and horses.")
    one_far = verdict([Answer("VGG16", "dog", 0.99, 0.5), Answer("NoPool-GAP", "cat", 0.95, 1.01)])
    assert one_far.kind == "not sure" and "looks unlike the photos NoPool-GAP learned from" in one_far.sentence
    assert "3.00 of the threshold" in far.detail and "probability rule" not in far.detail
    # Without statistics a network is judged by its probability, and the details say so.
    fallback = verdict([Answer("VGG16", "dog", 0.65), Answer("NoPool-GAP", "dog", 0.95)])
    assert fallback.kind == "not sure" and "probability rule" in fallback.detail
    assert "VGG16 is not confident" in fallback.sentence
    assert verdict([Answer("VGG16", "dog", 0.75), Answer("NoPool-GAP", "dog", 0.95)]).kind == "agree"
    # A class outside the four (ImageNet's "coffee mug") is not one of theirs.
    assert verdict([Answer("VGG16", None, 0.99), Answer("NoPool-GAP", "cat", 0.9, 0.1)]).kind == "not sure"
    assert verdict([Answer("NoPool-GAP", "cat", 0.9, 0.1)]).sentence == "NoPool-GAP says **cat** (NoPool-GAP 90%)."
    with pytest.raises(ValueError):
        verdict([])


def test_statistics_measure_distance_to_the_classes_in_units_of_the_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (4, 12))
    scale = np.linspace(0.2, 3.0, 12)  # unequal spreads: Mahalanobis, not Euclidean
    labels = rng.integers(0, 4, 2000)
    features = centres[labels] + rng.normal(0, 1, (2000, 12)) * scale
    held = centres[rng.integers(0, 4, 1000)] + rng.normal(0, 1, (1000, 12)) * scale
    stats = fit_stats(features, labels, ("bird", "cat", "dog", "horse"), held, dimensions=12, quantile=0.95)
    # The threshold is the 95th percentile of held-out distances, so about 5% of new in-class points exceed 1.
    fresh = centres[rng.integers(0, 4, 4000)] + rng.normal(0, 1, (4000, 12)) * scale
    assert 0.03 < (stats.distances(fresh) > 1).mean() < 0.07
    # Each class's mean is at distance 0; a point 6 standard deviations out along the tight axis is far, while the
    # same Euclidean step along the wide axis is not.
    means = np.stack([features[labels == c].mean(axis=0) for c in range(4)])
    assert np.allclose(stats.distances(means), 0, atol=1e-9)
    tight, wide = means[0].copy(), means[0].copy()
    tight[0] += 6 * scale[0]
    wide[-1] += 6 * scale[0]
    assert stats.distances(tight)[0] > 1 > stats.distances(wide)[0]
    # Fewer directions: the statistics shrink to D of them; saved and read back they give the same distances.
    small = fit_stats(features, labels, ("bird", "cat", "dog", "horse"), held, dimensions=4)
    assert small.projection.shape == (12, 4)
    path = small.save(tmp_path / "x.ood.npz")
    again = FeatureStats.load(path)
    assert again.classes == small.classes and np.allclose(again.distances(fresh[:50]), small.distances(fresh[:50]),
                                                          rtol=1e-4)


def stand_in(name: str, bias: dict[str, float]) -> cam.models.checkpoints.LoadedModel:
    """A stand-in whose answer is set by its logits' biases (kernel zero: the same for every image)."""
    loaded = cam.models.checkpoints.untrained_stand_in(name)
    loaded.trained = True
    logits = loaded.model.get_layer("logits")
    kernel, offsets = logits.get_weights()
    offsets[:] = [bias.get(c, 0.0) for c in loaded.classes]
    logits.set_weights([np.zeros_like(kernel), offsets])
    return loaded


def test_the_judge_reads_features_when_there_are_statistics_and_falls_back_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path)
    loaded = stand_in("nopool_gap", {"cat": 5.0})
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    result = explain_image(photo, Explainer(None, None, loaded.model), None, loaded)

    without = Judge([loaded])(result)  # no statistics file: the probability rule, said in the details
    assert without.kind == "agree" and without.sentence == "NoPool-GAP says **cat** (NoPool-GAP 98%)."
    assert "probability rule" in without.detail

    # Statistics of the features of 'training' pictures of flat colour: a noisy photo lies far from them.
    read = FeatureReader(loaded)
    flat = [np.full((32, 32, 3), value, np.uint8) for value in range(0, 240, 4)]
    features, probabilities = read(flat)
    assert features.shape == (60, 256) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # The Explainer's own pass gives the same pooled features, so the verdict needs no pass of its own there.
    assert np.allclose(result.explanation.pooled["cam"][0], read([photo])[0][0], rtol=1e-4, atol=1e-5)
    labels = np.arange(60) % 4
    fit_stats(features, labels, loaded.classes, features[::3], dimensions=8).save(stats_path("nopool_gap"))
    judged = Judge([loaded])(result)
    assert judged.kind == "not sure" and "distance of its features to the training photos' classes" in judged.detail
    assert Judge([loaded]).answers(result)[0].distance > 1
    # A corrupt file is not a crash: the probability rule again.
    stats_path("nopool_gap").write_bytes(b"not an npz")
    assert "probability rule" in Judge([loaded])(result).detail


def test_the_low_norm_check_and_no_check() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (400, 8)) + 5.0  # norms near sqrt(8 * 26) = 14.4
    labels = np.arange(400) % 4
    held = rng.normal(0, 1, (400, 8)) + 5.0
    short = fit_stats(features, labels, ("bird", "cat", "dog", "horse"), held, dimensions=4, quantile=0.9,
                      check="low_norm")
    assert short.threshold == np.inf and (short.unusual(held) > 1).mean() == pytest.approx(0.1, abs=0.01)
    assert short.unusual(features[:1] * 0.2)[0] > 1 > short.unusual(features[:1] * 3)[0]  # short is unusual, long not
    never = fit_stats(features, labels, ("bird", "cat", "dog", "horse"), held, check="none")
    assert (never.unusual(np.vstack([held, held * 0.01, held * 100])) == 0).all()
    said = verdict([Answer("VGG16", "dog", 0.9, 0.0, "none"), Answer("NoPool-GAP", "dog", 0.8, 1.4, "low_norm")])
    assert said.kind == "not sure" and "VGG16: dog 90%, features not checked" in said.detail
    assert "shortness of its feature vector 1.40 of the threshold" in said.detail
    with pytest.raises(ValueError, match="unknown check"):
        fit_stats(features, labels, ("bird", "cat", "dog", "horse"), held, check="energy")


def test_the_shipped_statistics_are_small_and_match_their_networks_and_the_choice() -> None:
    for name, choice in zip(("vgg16_photos", "nopool_gap_photos"), CHOSEN, strict=True):
        path = Path(cam.core.catalog.CHECKPOINTS) / f"{name}.ood.npz"
        if not path.is_file():
            pytest.skip(f"{path.name} not shipped here")
        stats = FeatureStats.load(path)
        card = cam.models.checkpoints.read_card(path.with_name(f"{name}.json"))
        assert path.stat().st_size < 2_000_000 and stats.check == choice.check
        assert stats.layers == (STATISTICS_LAYERS[card["architecture"]] if choice.features == "layers" else ())
        assert stats.classes == tuple(card["classes"])
        if choice.check == "mahalanobis":
            assert stats.projection.shape[1] == choice.dimensions


def test_layer_statistics_are_each_channels_log_mean_and_log_spread() -> None:
    layer = np.array([[[[1.0, 0.0], [3.0, 0.0]], [[1.0, 0.0], [3.0, 0.0]]]])  # (1, 2, 2, 2): channel 0 is 1, 3, 1, 3
    other = np.full((1, 1, 3, 1), 2.0)
    features = layer_statistics([layer, other])
    # Means 2 and 0, spreads 1 and 0 for the first layer; mean 2 and spread 0 for the second.
    assert np.allclose(features, np.log(np.array([[2.0, 0.0, 1.0, 0.0, 2.0, 0.0]]) + 1e-3))


def test_the_judge_reads_layer_statistics_with_a_pass_of_its_own(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path)
    loaded = stand_in("nopool_gap", {"dog": 5.0})
    layers = STATISTICS_LAYERS[loaded.card["architecture"]]
    read = FeatureReader(loaded, layers)
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, (40, 40 + 8 * k, 3), dtype=np.uint8) for k in range(3)]
    features, _ = read(photos)
    # The same as each photo's activations taken one by one and summarised in numpy.
    inner = keras.Model(loaded.model.inputs, [loaded.model.get_layer(name).output for name in layers])
    for photo, row in zip(photos, features, strict=True):
        x = cam.explain.verdict.own_aspect(photo, loaded.input_size).astype(np.float32)[None]
        assert np.allclose(row, layer_statistics(inner.predict_on_batch(x)), atol=1e-4)
    assert features.shape == (3, 2 * sum(loaded.model.get_layer(name).output.shape[-1] for name in layers))

    flat = [np.full((32, 32, 3), value, np.uint8) for value in range(0, 240, 4)]
    fitted, _ = read(flat)
    stats = fit_stats(fitted, np.arange(60) % 4, loaded.classes, fitted[::3], dimensions=8, layers=layers)
    stats.save(stats_path("nopool_gap"))
    assert FeatureStats.load(stats_path("nopool_gap")).layers == layers
    result = explain_image(photos[0], Explainer(None, None, loaded.model), None, loaded)
    judged = Judge([loaded])(result)
    assert judged.kind == "not sure" and "distance of its features" in judged.detail
    flat_result = explain_image(flat[5], Explainer(None, None, loaded.model), None, loaded)
    assert Judge([loaded]).answers(flat_result)[0].distance < 1  # one of the 'training' pictures: near
    # Statistics naming a layer the network lacks are not a crash: the probability rule.
    FeatureStats(stats.mean, stats.projection, stats.centres, stats.threshold, stats.classes,
                 layers=("no_such_layer",)).save(stats_path("nopool_gap"))
    assert "probability rule" in Judge([loaded])(result).detail


def test_the_screen_names_what_it_sees_and_comes_first() -> None:
    agree = [Answer("VGG16", "bird", 0.97, 0.4), Answer("NoPool-GAP", "bird", 0.46, 0.9)]
    coffee = Sighting(share=0.004, top_name="espresso", top_probability=0.69, top_is_ours=False)
    judged = verdict(agree, coffee)
    assert judged.kind == "not sure"
    assert judged.sentence == ("**Not sure**: a network that knows 1,000 kinds of things sees *espresso* here (69%); "
                               "ours know only birds, cats, dogs and horses.")
    assert f"not sure under {SCREEN_CUT:.0%}" in judged.detail and "its top class espresso 69%" in judged.detail
    # An unsure top class is not named; nor is one of ours (a share under the cut can still have one on top).
    vague = Sighting(share=0.1, top_name="bobsled", top_probability=0.19, top_is_ours=False)
    assert "sees no bird, cat, dog or horse here" in verdict(agree, vague).sentence
    ours_on_top = Sighting(share=SCREEN_CUT - 0.01, top_name="tabby", top_probability=SCREEN_CUT - 0.01,
                           top_is_ours=True)
    assert "sees no bird, cat, dog or horse here" in verdict(agree, ours_on_top).sentence
    # The screen's reason comes before far features'; a share at the cut or above leaves the networks' verdict.
    far = [Answer("VGG16", "dog", 0.99, 3.0), Answer("NoPool-GAP", "dog", 0.95, 1.5)]
    assert "*espresso*" in verdict(far, coffee).sentence
    dog = Sighting(share=SCREEN_CUT, top_name="beagle", top_probability=0.8, top_is_ours=True)
    assert verdict(agree, dog).sentence == "Both networks say **bird** (VGG16 97%, NoPool-GAP 46%)."
    assert "20% of its probability on our classes' ImageNet groups" in verdict(agree, dog).detail
    assert verdict(far, dog).kind == "not sure" and "unlike the photos" in verdict(far, dog).sentence


def stand_in_screen(bias: dict[str, float]) -> Screen:
    """A 1000-class screen whose answer is set by its logits' biases (the same for every image)."""
    import keras

    inputs = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="head_relu")(inputs))
    logits = keras.layers.Dense(1000, kernel_initializer="zeros", name="logits")
    outputs = keras.layers.Softmax()(logits(pooled))
    names = list(imagenet_names())
    logits.set_weights([np.zeros((2, 1000)), np.array([bias.get(name, 0.0) for name in names])])
    card = {"name": "screen", "classes": names, "input_size": 32}
    return Screen(cam.models.checkpoints.LoadedModel(keras.Model(inputs, outputs), card))


def test_the_judge_asks_its_screen_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cam.core.catalog, "CHECKPOINTS", tmp_path)
    loaded = stand_in("nopool_gap", {"cat": 5.0})
    photo = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    result = explain_image(photo, Explainer(None, None, loaded.model), None, loaded)
    assert Judge([loaded]).screen is None  # no checkpoint of the screen in this folder: not asked
    assert Judge([loaded])(result).kind == "agree"
    judged = Judge([loaded], stand_in_screen({"espresso": 14.0}))(result)
    assert judged.kind == "not sure" and "sees *espresso* here (100%)" in judged.sentence
    cat = Judge([loaded], stand_in_screen({"tabby": 14.0}))(result)
    assert cat.sentence == "NoPool-GAP says **cat** (NoPool-GAP 98%)." and "100% of its probability" in cat.detail
