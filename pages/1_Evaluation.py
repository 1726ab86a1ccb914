"""Evaluation page: the latest ``python -m cam report`` (from reports/latest or $CAM_REPORT_DIR), read-only. It opens
with three plain sentences from the report's numbers; no server path is shown."""

import streamlit as st

import navigation
from cam import report_content as report

st.set_page_config(page_title="Which map to trust", layout="wide")
navigation.links()
data = report.load_report(report.report_dir())
if data is None:
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
st.markdown("\n".join(f"- {sentence}" for sentence in report.plain_summary(data)))
st.caption("From the measurements below; they hold for these models and images, not for every network.")
# The report's own text says how it was produced (command, date, time, N, models and whether they were trained).
st.markdown(report.markdown(data, images=False, command=False))
for name, figure in report.plotly_figures(data).items():
    st.plotly_chart(figure, key=name)
scores = report.report_dir() / "scores.csv"
if scores.is_file():
    st.download_button("Per-map scores (scores.csv)", scores.read_bytes(), "scores.csv", "text/csv")
