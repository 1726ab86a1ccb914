"""The sidebar's links between the dashboard's pages, with names for people (Streamlit's own list would show the
file names); every page calls ``links``."""

import streamlit as st


def links() -> None:
    """Links to the pages, at the top of the sidebar."""
    st.sidebar.page_link("dashboard.py", label="Compare the maps", icon=":material/compare:")
    st.sidebar.page_link("pages/1_Evaluation.py", label="Which map to trust", icon=":material/fact_check:")
    st.sidebar.page_link("pages/2_Batches.py", label="Whole folders", icon=":material/photo_library:")
