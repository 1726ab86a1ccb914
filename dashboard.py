"""The dashboard: ``streamlit run dashboard.py``. Its three pages, named for people in the sidebar:

- ``pages/compare.py``, "Compare the maps" (the root address, which shared links carry): a photo's maps side by side;
- ``pages/Evaluation.py``, "Which map to trust": the reports of ``python -m cam report``;
- ``pages/Batches.py``, "Whole folders": the tables of ``python -m cam batch``.

This script runs before every page and imports no TensorFlow, so the two reading pages start without it.
"""

import streamlit as st
from streamlit.logger import get_logger

from cam.serve import library_patches

# File -> the page's name and icon in the sidebar. The first is at the root address; the others at their file's name
# (/Evaluation, /Batches: the addresses they had before st.navigation, so old links still reach them).
PAGES = {
    "pages/compare.py": ("Compare the maps", ":material/compare:"),
    "pages/Evaluation.py": ("Which map to trust", ":material/fact_check:"),
    "pages/Batches.py": ("Whole folders", ":material/photo_library:"),
}

# Only as Streamlit's script: the slow methods' child process (multiprocessing's spawn) imports this file again as
# __mp_main__, where none of this may run.
if __name__ == "__main__":
    get_logger("cam")  # the library's own lines (workarounds active, memory returned, exit) go to the server's log
    st.set_page_config(page_title="Where does the network look?", page_icon=":material/search:", layout="wide")
    library_patches.apply_all()
    st.navigation([st.Page(page, title=title, icon=icon, default=index == 0)
                   for index, (page, (title, icon)) in enumerate(PAGES.items())]).run()
