"""Whole folders page: the tables of ``python -m cam batch`` that whoever runs the server lists in $CAM_BATCHES
(``cam.serve.batch.batch_folders``; visitors choose by name, never by path), as a sortable table, and one photo's panels
drawn from its saved maps by ``cam.explain.pipeline.render_panels``, as on the first page."""

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from cam.core.catalog import Role
from cam.core.images import ImageError, load_image
from cam.explain.pipeline import model_name, render_panels
from cam.explain.registry import METHODS
from cam.serve import batch

LOG = logging.getLogger(__name__)
PANELS_PER_ROW = 3

st.title("Whole folders of photos")
found = batch.batch_folders()
if not found:
    st.info(
        "No folder of explained photos here yet. Whoever runs this server can explain a whole folder with the "
        "command below, then name the output's parent folder in `$CAM_BATCHES` and restart the page."
    )
    st.code("python -m cam batch data/photos4/test --out batches/photos4-test --workers 2\n"
            "CAM_BATCHES=batches streamlit run dashboard.py", language="bash")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=4)
def table_of(name: str, _version: float) -> pd.DataFrame:
    """The batch's table (``_version``: the file's time, so that a rerun of the batch is read again)."""
    return batch.read_table(found[name])


def overview(table: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """The columns people sort by: each network's answer and confidence, and which maps came out blank."""
    shown = pd.DataFrame({"Photo": table["item"]})
    for role in Role:
        if f"{role}_model" in table:
            model = table[f"{role}_model"].dropna().iloc[0] if table[f"{role}_model"].notna().any() else role
            shown[f"{model}: class"] = table[f"{role}_class_1"]
            shown[f"{model}: confidence"] = table[f"{role}_p_1"]
    blank = [table.get(f"{key}_blank", pd.Series(False, index=table.index)).fillna(False).astype(bool)
             for key in methods]
    shown["Blank maps"] = [", ".join(METHODS[key].label for key, column in zip(methods, blank, strict=True)
                                     if column[i]) for i in table.index]
    shown["Problem"] = table["error"]
    return shown


def choose_row() -> None:
    """A click on a row of the table chooses that photo below."""
    rows = st.session_state["rows"].selection.rows
    if rows:
        st.session_state["photo"] = st.session_state["items"][rows[0]]


name = st.selectbox("Folder", list(found), help="The folders of explained photos this server offers.")
folder = found[name]
table = table_of(name, (folder / batch.TABLE).stat().st_mtime)
methods = batch.recorded(folder)["methods"]
failed = int((table["error"] != "").sum())
st.markdown(f"**{len(table)} photos**" + (f", of which {failed} could not be read" if failed else "") + ". "
            "Click a column's name to sort by it; click a row to see that photo's maps below.")
st.session_state["items"] = table["item"].tolist()
shown = overview(table, methods)
st.dataframe(shown, hide_index=True, on_select=choose_row, selection_mode="single-row", key="rows",
             column_config={column: st.column_config.ProgressColumn(column, format="percent")
                            for column in shown if column.endswith("confidence")})
item = st.selectbox("Photo", table["item"].tolist(), key="photo")
row = table.set_index("item").loc[item].to_dict() | {"item": item}
if row["error"]:
    st.warning(row["error"])
    st.stop()
try:
    image = load_image(Path(batch.recorded(folder)["root"]) / item, name=item)
except ImageError as error:
    LOG.warning("batch %s: %s", name, error)
    st.warning("This photo is no longer where the batch found it, so its maps cannot be shown over it.")
    st.stop()
result = batch.rebuilt_result(folder, row, image)
panels = render_panels(result)
for start in range(0, len(panels), PANELS_PER_ROW):
    for column, panel in zip(st.columns(PANELS_PER_ROW), panels[start : start + PANELS_PER_ROW], strict=False):
        with column:
            st.image(panel.image, width="stretch")
            st.caption(panel.caption)
            if panel.empty:
                st.info(panel.empty)
            if panel.note:
                st.caption(panel.note)
st.caption(" · ".join(f"{model_name(result.model(role))}: " + ", ".join(
    f"{cls} {p:.0%}" for cls, p in result.top_predictions(role, batch.TOP_K)) for role in result.roles))
