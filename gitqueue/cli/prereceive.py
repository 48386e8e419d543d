"""Entry point of the installed pre-receive hook: the environment in, gitqueue.hook.run out.

Kept apart from the click commands: the hook runs for every push and imports no more than it
needs. An unexpected error prints its traceback (the pusher sees it) and refuses the push.
"""

import os
import sys


def main(branch: str = "main") -> int:
    """Run the pre-receive check in the repository git-receive-pack runs us in."""
    from ..hook import run

    return run(os.environ.get("GIT_DIR") or ".", dict(os.environ), sys.stdin.buffer, sys.stderr, branch)
