"""The held-out-source benchmark's projection (benchmarks.bench_held_out_sources): it removes what tells sources apart
within a class and keeps what tells classes apart."""

import numpy as np

from benchmarks.bench_held_out_sources import source_directions


def test_projecting_off_the_source_directions_makes_each_classs_sources_alike() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 0, 1, 1, 1], 40)
    sources = np.repeat(["a", "d", "a", "b", "c"], 40)  # source a holds both classes
    class_means = np.zeros((2, 6))
    class_means[1, 0] = 3.0  # the classes differ along axis 0 only
    style = {"a": [0, 2, 0, 0, 0, 0], "b": [0, 0, -1, 1, 0, 0], "c": [0, 0, 0, 0, 2, 0], "d": [0, 0, 0, 0, 0, 1.5]}
    features = class_means[labels] + np.array([style[s] for s in sources]) + rng.normal(0, 0.1, (200, 6))

    directions = source_directions(features, labels, sources)
    assert directions.shape[1] == 3  # class 0: 2 sources -> 1 direction; class 1: 3 sources -> 2
    np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-12)
    projected = features @ (np.eye(6) - directions @ directions.T)
    for label in (0, 1):
        mine = labels == label
        means = [projected[mine & (sources == s)].mean(axis=0) for s in np.unique(sources[mine])]
        np.testing.assert_allclose(means, [means[0]] * len(means), atol=1e-9)
    class_gap = projected[labels == 1].mean(axis=0) - projected[labels == 0].mean(axis=0)
    assert class_gap[0] > 2.5  # the class difference survives (it is not a source direction)
