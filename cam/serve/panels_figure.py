"""The page's panels as one Plotly figure: every panel at the photo's resolution (a downscaled copy past
``MAX_DISPLAY_SIDE``), PANELS_PER_ROW to a row, axes matched so that a zoom on one zooms them all; and the heat
maps' colour strip as HTML."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cam.core.images import resize
from cam.explain import render
from cam.explain.pipeline import Panel
from cam.serve.share import data_uri

# Larger images go to the browser as a downscaled copy (the page would choke on tens of megapixels);
# downloads always keep the full resolution.
MAX_DISPLAY_SIDE = 2048
PANEL_WIDTH = 260  # pixels a panel gets at 1280x720 with the sidebar open; sets the figure's height
PANEL_HEIGHT = (160, 300)  # smallest and largest panel height: the results fit a 720-pixel-high screen
TITLE_HEIGHT = 24
PANELS_PER_ROW = 3


def panels_figure(panels: list[Panel], revision: str, zoom: dict | None) -> tuple[go.Figure, float]:
    """One figure with every panel, PANELS_PER_ROW to a row, whose axes are matched, so zooming one zooms them all.
    ``zoom`` ({"x": [x0, x1], "y": [y0, y1]} in image pixels, or None) is held by the server: Streamlit remounts a
    chart whose figure changed, so a zoom kept only in the browser would be lost at every change of colours,
    opacity or methods. Dragging a box selects it. Returns the figure and the display downscale factor (1 = full
    resolution)."""
    height, width = panels[0].image.shape[:2]
    scale = max(1.0, max(height, width) / MAX_DISPLAY_SIDE)
    shown = (round(height / scale), round(width / scale))
    rows = -(-len(panels) // PANELS_PER_ROW)
    fig = make_subplots(
        rows=rows, cols=PANELS_PER_ROW, shared_xaxes="all", shared_yaxes="all", horizontal_spacing=0.01,
        vertical_spacing=0.08 if rows > 1 else 0.0, subplot_titles=[panel.title for panel in panels],
    )
    for index, panel in enumerate(panels):
        row, col = index // PANELS_PER_ROW + 1, index % PANELS_PER_ROW + 1
        # dx, dy: a displayed pixel covers `scale` original pixels, so axes and hover stay in original pixels.
        fig.add_trace(
            go.Image(
                source=data_uri(resize(panel.image, shown)), dx=scale, dy=scale, zsmooth=False, name=panel.title,
                hovertemplate="x %{x:.0f}, y %{y:.0f}<extra>" + panel.title + "</extra>",
            ),
            row=row, col=col,
        )
        # Invisible corners: a box drawn over an image alone would not be reported as a selection.
        fig.add_trace(go.Scatter(x=[0, width], y=[0, height], mode="markers", marker={"opacity": 0},
                                 hoverinfo="skip", showlegend=False), row=row, col=col)
        if panel.empty:  # said on the panel itself, not only below it
            fig.add_annotation(text="Nothing found for this class", x=width / 2, y=height / 2, showarrow=False,
                               bgcolor="rgba(255,255,255,0.85)", row=row, col=col)
    fig.update_xaxes(visible=False, range=zoom["x"] if zoom else [-0.5, width - 0.5])
    fig.update_yaxes(visible=False, range=zoom["y"] if zoom else [height - 0.5, -0.5])
    panel_height = int(np.clip(PANEL_WIDTH * height / width, *PANEL_HEIGHT))
    # One aspect constraint on the first subplot: the other axes match it (matched axes ignore scaleanchor).
    fig.update_layout(
        yaxis_scaleanchor="x", uirevision=revision, margin={"l": 0, "r": 0, "t": TITLE_HEIGHT, "b": 0},
        height=rows * (panel_height + TITLE_HEIGHT), dragmode="select", selectdirection="any",
        activeselection={"fillcolor": "rgba(0,0,0,0)"}, newselection={"line": {"color": "white", "dash": "dot"}},
    )
    return fig, scale


def colour_strip(colormap: str) -> str:
    """The heat maps' colour strip as a thin HTML gradient (left: the map's lowest value, right: its highest)."""
    stops = ", ".join(f"rgb{tuple(int(c) for c in rgb)}" for rgb in render.colour_bar(colormap, 11, 1)[0])
    return f'<div style="height:8px;border-radius:2px;background:linear-gradient(to right, {stops})"></div>'
