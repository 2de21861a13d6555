"""The app's one entry point: `streamlit run streamlit_app.py`.

It sits at the repository's root so that `core` and `app` import without path tricks, sets the page
config and the style sheet once, parses the URL into the session's UIState once, declares the pages
(st.navigation), runs the chosen one, and then draws the sidebar controls every page shares.
Heavy modules are imported here, up front, in the server's first script run: two sessions importing
them for the first time from two threads at once can see a half-initialised module.
"""

import pandas  # noqa: F401  (imported once, up front: see above)
import plotly.graph_objects  # noqa: F401
import streamlit as st
import torch  # noqa: F401

from app import views

st.set_page_config(page_title="AdvFT", page_icon="🛡️", layout="wide")
views.load_css()
views.ui_state()
page = st.navigation([
    st.Page("app/pages/defend.py", title="Defend", icon=":material/shield:", url_path="defend", default=True),
    st.Page("app/pages/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
    st.Page("app/pages/attack.py", title="Attack", icon=":material/bug_report:", url_path="attack"),
])
page.run()
views.shared_sidebar()
views.mirror_url()
