"""Evaluation page: the latest ``python -m cam report`` (from reports/latest or $CAM_REPORT_DIR), read-only."""

import streamlit as st

from cam import report_content as report

st.set_page_config(page_title="Evaluation", layout="wide")
folder = report.report_dir()
data = report.load_report(folder)
if data is None:
    st.title("Evaluation")
    st.info(
        f"No report in `{folder}` yet. Produce one with the command below ({report.EXAMPLE_DURATION} for the three "
        "methods of the study on 1,000 images and 1,000 mosaics; smaller `--n` and `--mosaics` are faster, "
        "`--methods all` adds six methods and is much slower), or point `$CAM_REPORT_DIR` at a folder that holds "
        "a report.json."
    )
    st.code(report.EXAMPLE_COMMAND, language="bash")
    st.stop()

# The report's own text says how it was produced (command, date, time, N, models and whether they were trained).
st.markdown(report.markdown(data, images=False))
st.caption(f"Read from `{folder}`.")
for name, figure in report.plotly_figures(data).items():
    st.plotly_chart(figure, key=name)
scores = folder / "scores.csv"
if scores.is_file():
    st.download_button("Per-map scores (scores.csv)", scores.read_bytes(), "scores.csv", "text/csv")
