"""The training process of an app job: `python -m app.worker COMMANDS_FD MESSAGES_FD PARENT_PID THREADS`,
started by app.jobs.Job, which talks to it over the two pipes (see app.jobs.child_main)."""

import sys

from app.jobs import child_main

if __name__ == "__main__":
    child_main(*map(int, sys.argv[1:]))
