"""Named points where a test can have this process killed, to prove what a crash there leaves behind.

`OPSKEEPER_FAILPOINT=capture.slice_stored opskeeper run-now capture` dies with SIGKILL (no cleanup, no
`finally`, as a power cut or the kernel's OOM killer would) when the run reaches that point. Unset, a
failpoint costs one dictionary lookup. Only tests set it; the README does not advertise it.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    """Die here, at once, if OPSKEEPER_FAILPOINT names this point."""
    if os.environ.get("OPSKEEPER_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
