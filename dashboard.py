"""The dashboard: ``streamlit run dashboard.py``. Its three pages, named for people in the sidebar:

- ``pages/compare.py``, "Compare the maps" (the root address, which shared links carry): a photo's maps side by side;
- ``pages/evaluation.py``, "Which map to trust": the reports of ``python -m cam report``;
- ``pages/batches.py``, "Whole folders": the tables of ``python -m cam batch``.

This script runs before every page and imports no TensorFlow, so the two reading pages start without it.
"""

import streamlit as st

from cam.serve import library_patches

st.set_page_config(page_title="Where does the network look?", page_icon=":material/search:", layout="wide")
library_patches.apply_all()
PAGES = [
    st.Page("pages/compare.py", title="Compare the maps", icon=":material/compare:", default=True),
    st.Page("pages/evaluation.py", title="Which map to trust", icon=":material/fact_check:"),
    st.Page("pages/batches.py", title="Whole folders", icon=":material/photo_library:"),
]
st.navigation(PAGES).run()
