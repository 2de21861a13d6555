"""Which frame the Defend page's timeline shows: a pure rule, apart from Streamlit, so it can be tested alone.

Options are strings ("frame:120", "epoch:2", "live"; select_slider reads a tuple value as a range).
"""

from __future__ import annotations


def shown(options: list[str], stored: str | None, wanted: str | None, *, following: bool,
          replay_index: int | None = None) -> str:
    """The option to show.

    replay_index   a replay in progress shows its frame;
    following      a job of this run is working and the user has not moved the slider: its newest option,
                   which is 'live' once the job's snapshots reach the page. Keeping the stored option instead
                   pinned the chart to step 0 whenever the page reran between the job writing its first frame
                   to the run folder and its first snapshot arriving: the job trained, the chart stood still;
    stored         otherwise the option the slider holds, while it still exists;
    wanted         else the one the link names (its epoch), else the newest.
    """
    if replay_index is not None:
        return options[min(replay_index, len(options) - 1)]
    if following:
        return options[-1]
    if stored in options:
        return stored
    return wanted if wanted in options else options[-1]
