"""Who holds a piece of shared work: a process named by its host and process id.

Processes sharing PostgreSQL and the data folder cannot tell whether a lease or a temporary file
of another process is in use, except on their own host: there a process that is gone (no such
process id) holds nothing, and its work is taken up at once instead of after a lease or grace
period. A name from another host, or of a process id in use again, is left to the lease.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket

_OWNER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)")


@functools.cache
def host_tag() -> str:
    """This host's name as 8 hex digits (a host name may hold the characters a file name must not)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def this_process() -> str:
    """`<host tag>-<pid>`: the start of every lease owner and temporary file name of this process."""
    return f"{host_tag()}-{os.getpid()}"


def gone(owner: str) -> bool:
    """Whether `owner` (a name that starts with `this_process()`'s form) was a process of this
    host that no longer runs. False for another host's, or an unknown form: the lease decides."""
    match = _OWNER.match(owner)
    if match is None or match["host"] != host_tag():
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it runs, as another user
    return False


def found_in(name: str) -> str | None:
    """The owner named inside a file name (`….<host tag>-<pid>.tmp`), or None."""
    match = re.search(r"\.([0-9a-f]{8}-\d+)\.[a-z]+$", name)
    return match[1] if match else None
