"""The app's one entry point: `streamlit run streamlit_app.py`.

It sits at the repository's root so that `core` and `app` import without path tricks, sets the page
config and the style sheet once, parses the URL into the session's UIState once, declares the pages
(st.navigation), runs the chosen one, and then draws what every page shares: the sidebar's style and
export controls, and the heartbeat that lets a closed tab's job stop itself.
"""

import streamlit as st

from app import session, views

st.set_page_config(page_title="AdvFT", page_icon="🛡️", layout="wide")
views.load_css()
session.ui_state()
page = st.navigation([
    st.Page("app/pages/defend.py", title="Defend", icon=":material/shield:", url_path="defend", default=True),
    st.Page("app/pages/atlas.py", title="Atlas", icon=":material/grid_view:", url_path="atlas"),
    st.Page("app/pages/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
    st.Page("app/pages/attack.py", title="Attack", icon=":material/bug_report:", url_path="attack"),
])
page.run()
views.shared_sidebar()
session.heartbeat()
session.mirror_url()
views.preload_modules()  # after the page: it never delays the first plot
