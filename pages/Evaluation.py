"""Evaluation page: the reports of ``python -m cam report`` (every reports/*/ with a report.json, the photo pair's
first, or the folders in $CAM_REPORT_DIR), one tab each, read-only. Each opens with three plain sentences from its
numbers; no server path is shown. A report that cannot be read or shown says so in one sentence in its own tab;
the other tabs still work."""

from pathlib import Path

import streamlit as st
from streamlit.logger import get_logger

from cam.evaluate import report_content as report

log = get_logger(__name__)


def read(folder: Path) -> dict | str | None:
    """The report of ``folder``, a sentence saying why it cannot be read, or None when there is none."""
    try:
        return report.load_report(folder)
    except report.ReportError as error:
        log.warning("the report in %s cannot be read: %s", folder, error.__cause__ or "not a report")
        return str(error)


def show(folder: Path, data: dict) -> None:
    """One report: one plain sentence per use, then the full report (text, figures, per-map scores) folded away."""
    st.markdown("\n".join(f"- {sentence}" for sentence in report.plain_summary(data)))
    with st.expander("The full report: how it was measured, tables and figures"):
        # The report's own text says how it was produced (command, date, time, N, models, whether trained).
        st.markdown(report.markdown(data, images=False))
        for name, figure in report.plotly_figures(data).items():
            st.plotly_chart(figure, key=f"{folder.name}-{name}")
        scores = folder / "scores.csv"
        if scores.is_file():
            st.download_button("Per-map scores (scores.csv)", scores.read_bytes(), "scores.csv", "text/csv",
                               key=f"{folder.name}-csv")


def title(folder: Path, data: dict | str) -> str:
    """A tab's title: the network pair the report scored, or, for a report that cannot be read, its folder's name."""
    if isinstance(data, dict):
        try:
            return report.report_title(data)
        except (KeyError, TypeError, AttributeError):
            pass
    return f"Report “{folder.name}”"


reports = [(folder, data) for folder in report.report_dirs() if (data := read(folder)) is not None]
if not reports:
    st.title("Which map can I trust for what?")
    st.info(
        "No evaluation report here yet. Whoever runs this server can produce one with the command below "
        f"({report.EXAMPLE_DURATION} for the three methods of the study on 1,000 images and 1,000 mosaics; smaller "
        "`--n` and `--mosaics` are faster, `--methods all` adds six methods and is much slower), or point "
        "`$CAM_REPORT_DIR` at a folder that holds a report.json."
    )
    st.code(report.EXAMPLE_COMMAND, language="bash")
    st.stop()

st.title("Which map can I trust for what?")
st.caption("From measurements of these networks on their test images; they hold for these networks, not for every "
           "network. Each tab is one pair of networks.")
tabs = st.tabs([title(folder, data) for folder, data in reports]) if len(reports) > 1 else [st.container()]
for tab, (folder, data) in zip(tabs, reports, strict=True):
    with tab:
        if isinstance(data, str):
            st.error(data, icon=":material/description:")
            continue
        try:
            show(folder, data)
        except Exception:  # a report of another version or hand-edited: this tab says so, the others still work
            log.exception("the report in %s could not be shown", folder)
            st.error(report.UNSHOWABLE_REPORT, icon=":material/description:")
try:
    differences = report.why_reports_differ([data for _, data in reports if isinstance(data, dict)])
except Exception:  # as for a tab: a report this page cannot read leaves the comparison out, nothing else
    log.exception("the reports could not be compared")
    differences = []
if differences:
    st.markdown("**Why the tabs differ**")
    st.markdown("\n".join(f"- {sentence}" for sentence in differences))

by_size = report.accuracy_by_size()
if by_size:
    st.subheader("How often the networks are right, by detail")
    st.markdown("Share of the test photos each network names correctly, when it sees the photo at its own shape with "
                "the short side this many pixels, and when the photo is squashed into the square it was trained on. "
                "The dashboard's **Detail** control picks the size; the standard detail is the first own-shape column.")
    for pair, rows in by_size.items():
        st.caption(pair)
        st.dataframe(rows, hide_index=True)
