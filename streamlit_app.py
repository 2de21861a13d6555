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
defend = st.Page("app/pages/defend.py", title="Defend", icon=":material/shield:", url_path="home", default=True)
page = st.navigation([
    defend,
    st.Page("app/pages/atlas.py", title="Atlas", icon=":material/grid_view:", url_path="atlas"),
    st.Page("app/pages/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
    st.Page("app/pages/attack.py", title="Attack", icon=":material/bug_report:", url_path="attack"),
    # Streamlit serves the default page at "/" only; a link or bookmark to /defend (the page's name) lands
    # there, query and all, instead of on "Page not found".
    st.Page(lambda: st.switch_page(defend, query_params=st.query_params.to_dict()), title="Defend",
            url_path="defend", visibility="hidden"),
])
page.run()
views.shared_sidebar()
views.recover_from_frontend_errors()
session.heartbeat()
session.mirror_url()
views.preload_modules()  # after the page: it never delays the first plot
