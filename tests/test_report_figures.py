"""The report's figures are described once (``figure_specs``) and both renderers draw the same numbers."""

from __future__ import annotations

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from cam.evaluate import report_content
from cam.evaluate.report_content import FIGURES, PANEL_COLUMNS, figure_specs, matplotlib_figures, plotly_figures

PHOTOS = report_content.DEFAULT_OUT.parent / "photos"  # the shipped photo report


def row(set_: str, metric: str, method: str, mean: float, low: float, high: float, stage: str = "") -> dict:
    return {"set": set_, "metric": metric, "method": method, "stage": stage, "mean": mean, "low": low, "high": high,
            "n": 10}


def hand_made() -> dict:
    """Two methods, two score panels (plus one unmeasured row), a sanity cascade of 2 and 1 stages, resolution
    shares given out of numeric order."""
    return {
        "meta": {"methods": {"a": "Method A", "b": "Method B"}},
        "summary": [
            row("test", "deletion_auc", "a", 0.6, 0.5, 0.8), row("test", "deletion_auc", "b", 0.4, 0.3, 0.45),
            row("mosaics", "pointing", "a", 0.9, 0.85, 0.95), row("mosaics", "pointing", "b", 0.7, 0.6, 0.75),
            row("mosaics", "energy", "a", None, None, None),
            row("sanity", "spearman", "a", 0.5, 0.25, 0.75, stage="logits"),
            row("sanity", "spearman", "a", 0.1, 0.0, 0.3, stage="block5"),
            row("sanity", "spearman", "b", 0.9, 0.8, 1.0, stage="logits"),
        ],
        "curves": {"x": [0.0, 0.5, 1.0], "methods": {
            "a": {"deletion": [1.0, 0.5, 0.25], "insertion": [0.0, 0.5, 1.0]},
            "b": {"deletion": [1.0, 0.75, 0.5], "insertion": [0.25, 0.5, 0.75]},
        }},
        "resolution": [{"method": "a", "median": 4.0, "shares": {"16": 0.25, "2": 0.5, "4": 0.25}},
                       {"method": "b", "median": 4.0, "shares": {"4": 1.0}}],
    }


def test_the_description_of_a_hand_made_report_has_hand_checked_numbers() -> None:
    specs = figure_specs(hand_made())
    assert list(specs) == list(FIGURES)
    assert all(spec.title == FIGURES[key] and spec.key == key for key, spec in specs.items())

    deletion, insertion = specs["curves"].panels
    assert specs["curves"].columns == 2
    assert (deletion.x_title, insertion.x_title) == ("share of pixels deleted", "share of pixels inserted")
    assert [s.y for s in insertion.series] == [[0.0, 0.5, 1.0], [0.25, 0.5, 0.75]]
    assert [s.legend for s in deletion.series + insertion.series] == [True, True, False, False]
    assert [s.group for s in insertion.series] == ["a", "b"]

    scores = specs["scores"]
    assert scores.columns == PANEL_COLUMNS and len(scores.panels) == 2  # the unmeasured energy row gets no panel
    (bars,) = scores.panels[0].series
    assert bars.kind == "bar" and bars.x == ["Method A", "Method B"] and bars.y == [0.6, 0.4]
    assert bars.below == pytest.approx([0.1, 0.1]) and bars.above == pytest.approx([0.2, 0.05])
    assert bars.hover == ["n=10", "n=10"]

    (sanity,) = specs["sanity"].panels
    assert sanity.y_range == (-1.05, 1.05) and sanity.integer_x
    a, b = sanity.series
    assert (a.x, a.y, a.hover) == ([1, 2], [0.5, 0.1], ["down to logits", "down to block5"])
    assert a.below == pytest.approx([0.25, 0.1]) and a.above == pytest.approx([0.25, 0.2])
    assert (b.x, b.y) == ([1], [0.9])

    (resolution,) = specs["resolution"].panels
    assert [s.x for s in resolution.series] == [["2x2", "4x4", "16x16"]] * 2
    assert [s.y for s in resolution.series] == [[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]]


def test_the_description_is_plain_data() -> None:
    def plain(value: object) -> bool:
        if isinstance(value, list | tuple):
            return all(plain(item) for item in value)
        return value is None or isinstance(value, str | int | float | bool)

    for spec in figure_specs(hand_made()).values():
        for panel in spec.panels:
            assert plain(panel.y_range)
            for s in panel.series:
                assert all(plain(getattr(s, field)) for field in ("colour", "x", "y", "below", "above", "hover"))


def matplotlib_series(ax) -> list[tuple[list[float], list[float] | None, list[float] | None]]:
    """(y, below, above) per series drawn on ax: plain lines, then lines with error bars, then bars."""
    def errors(container: ErrorbarContainer | None, y: list[float]) -> tuple[list[float] | None, ...]:
        if container is None:
            return None, None
        segments = container.lines[2][0].get_segments()
        pairs = list(zip(y, segments, strict=True))
        return [mean - s[0][1] for mean, s in pairs], [s[1][1] - mean for mean, s in pairs]

    with_errors = [c for c in ax.containers if isinstance(c, ErrorbarContainer) and c.lines[0] is not None]
    every_errorbar = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    taken = {id(line) for c in every_errorbar for line in (c.lines[0], *c.lines[1])}  # data lines and caps
    found = [(list(line.get_ydata()), None, None) for line in ax.get_lines() if id(line) not in taken]
    for container in with_errors:
        y = list(container.lines[0].get_ydata())
        found.append((y, *errors(container, y)))
    for bars in (c for c in ax.containers if isinstance(c, BarContainer)):
        y = [patch.get_height() for patch in bars]
        found.append((y, *errors(bars.errorbar, y)))
    return found


def plotly_series(figure, panel: int) -> list[tuple[list[float], list[float] | None, list[float] | None]]:
    axis = "x" if panel == 0 else f"x{panel + 1}"
    return [(list(trace.y), *((list(trace.error_y.arrayminus), list(trace.error_y.array))
                              if trace.error_y.array is not None else (None, None)))
            for trace in figure.data if trace.xaxis == axis]


def assert_both_renderers_agree(data: dict) -> None:
    specs, drawn, web = figure_specs(data), matplotlib_figures(data), plotly_figures(data)
    assert list(drawn) == list(web) == list(FIGURES)
    for key, spec in specs.items():
        assert drawn[key].get_suptitle() == web[key].layout.title.text == FIGURES[key]
        assert len(drawn[key].axes) == len(spec.panels)
        assert len(web[key].data) == sum(len(panel.series) for panel in spec.panels)
        for index, (ax, panel) in enumerate(zip(drawn[key].axes, spec.panels, strict=True)):
            matplotlib_ys, plotly_ys = matplotlib_series(ax), plotly_series(web[key], index)
            assert len(matplotlib_ys) == len(plotly_ys) == len(panel.series)
            for (y, below, above), (web_y, web_below, web_above), s in zip(matplotlib_ys, plotly_ys, panel.series,
                                                                            strict=True):
                assert y == pytest.approx(s.y) and web_y == pytest.approx(s.y)
                assert (below is None) == (web_below is None) == (s.below is None)
                if below is not None:
                    assert below == pytest.approx(s.below) and web_below == pytest.approx(s.below)
                    assert above == pytest.approx(s.above) and web_above == pytest.approx(s.above)
            if panel.y_range is not None:
                assert ax.get_ylim() == pytest.approx(panel.y_range)
                assert tuple(web[key].layout["yaxis" if index == 0 else f"yaxis{index + 1}"].range) == panel.y_range


def test_both_renderers_draw_the_same_numbers() -> None:
    assert_both_renderers_agree(hand_made())


def test_the_renderers_keep_the_figures_essentials() -> None:
    data = hand_made()
    drawn, web = matplotlib_figures(data), plotly_figures(data)
    # One legend entry per method, on the first curves panel; a method's two curves toggle together.
    assert [ax.get_legend() is not None for ax in drawn["curves"].axes] == [True, False]
    assert [t.get_text() for t in drawn["curves"].axes[0].get_legend().get_texts()] == ["Method A", "Method B"]
    curves = web["curves"].data
    assert [(t.legendgroup, t.showlegend) for t in curves] == [("a", True), ("b", True), ("a", False), ("b", False)]
    assert web["curves"].layout.xaxis.title.text == drawn["curves"].axes[0].get_xlabel() == "share of pixels deleted"
    # Scores: a grid of PANEL_COLUMNS columns, 260 px per row, n in the hover text.
    assert web["scores"].layout.height == 260
    assert [t.hovertext for t in web["scores"].data] == [("n=10", "n=10")] * 2
    # Sanity: stage names in the hover text; resolution: bars grouped under "NxN" ticks in numeric order.
    assert web["sanity"].data[0].hovertext == ("down to logits", "down to block5")
    assert [t.get_text() for t in drawn["resolution"].axes[0].get_xticklabels()] == ["2x2", "4x4", "16x16"]
    assert web["resolution"].layout.barmode == "group"
    assert [list(t.x) for t in web["resolution"].data] == [["2x2", "4x4", "16x16"]] * 2


def test_both_renderers_draw_the_shipped_photo_report() -> None:
    data = report_content.load_report(PHOTOS)
    assert_both_renderers_agree(data)
    assert len(figure_specs(data)["scores"].panels) == len(report_content._score_panels(data))
