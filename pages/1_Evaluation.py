"""Evaluation page: the reports of ``python -m cam report`` (every reports/*/ with a report.json, the photo pair's
first, or the folders in $CAM_REPORT_DIR), one tab each, read-only. Each opens with three plain sentences from its
numbers; no server path is shown."""

import streamlit as st

import navigation
from cam import report_content as report

st.set_page_config(page_title="Which map to trust", layout="wide")
navigation.links()
reports = [(folder, data) for folder in report.report_dirs() if (data := report.load_report(folder)) is not None]
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
tabs = st.tabs([report.report_title(data) for _, data in reports]) if len(reports) > 1 else [st.container()]
for tab, (folder, data) in zip(tabs, reports, strict=True):
    with tab:
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
differences = report.why_reports_differ([data for _, data in reports])
if differences:
    st.markdown("**Why the tabs differ**")
    st.markdown("\n".join(f"- {sentence}" for sentence in differences))
