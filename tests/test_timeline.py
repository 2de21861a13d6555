"""The Defend page's timeline rule (app.timeline.shown), rerun by rerun as the page meets a starting job."""

from app.timeline import shown


def test_a_starting_job_is_followed_to_live_even_if_the_page_saw_its_first_frame_first():
    # Rerun 1: the job has written frame 0 to its folder, its first snapshot has not reached the page.
    stored = shown(["frame:0"], None, None, following=True)
    assert stored == "frame:0"
    # Rerun 2: the snapshots arrive. The timeline must go live, not stay on frame 0 (the chart stood still).
    stored = shown(["frame:0", "live"], stored, None, following=True)
    assert stored == "live"
    stored = shown(["frame:0", "frame:8", "live"], stored, None, following=True)
    assert stored == "live"


def test_a_frame_the_user_chose_stays_and_a_link_names_one():
    options = ["frame:0", "frame:8", "frame:16", "live"]
    assert shown(options, "frame:8", None, following=False) == "frame:8"      # the user's choice stays
    assert shown(options[:-1], None, "frame:8", following=False) == "frame:8"  # ?epoch=... of a finished run
    assert shown(options[:-1], None, "frame:99", following=False) == "frame:16"  # not there: the newest
    assert shown(options[:-1], "gone", None, following=False) == "frame:16"


def test_a_replay_moves_one_frame_per_rerun_and_stops_at_the_last():
    options = ["frame:0", "frame:8", "frame:16"]
    assert [shown(options, "frame:16", None, following=False, replay_index=i) for i in range(4)] == \
        ["frame:0", "frame:8", "frame:16", "frame:16"]
