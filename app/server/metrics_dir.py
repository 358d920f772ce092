"""The folder where worker processes write their metrics (prometheus-client's multiprocess mode):
one per supervisor, locked for as long as it runs, and swept when its supervisor was killed."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

METRICS_LOCK = "supervisor.lock"  # held by the supervisor whose folder it is, for as long as it runs
METRICS_DIR_PREFIX = "latentserve-metrics-"


def make_metrics_dir(parent: Path) -> tuple[str, int]:
    """A fresh folder for the workers' metrics, and the descriptor of the lock on it that this
    process holds until it exits (the kernel drops it however the process ends). It gets its
    name only once locked, so no other supervisor's sweep can take it for a stale one."""
    building = tempfile.mkdtemp(prefix=f".{METRICS_DIR_PREFIX}", dir=parent)
    fd = os.open(os.path.join(building, METRICS_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    folder = os.path.join(parent, f"{METRICS_DIR_PREFIX}{os.getpid()}-{os.path.basename(building)[len(METRICS_DIR_PREFIX) + 1:]}")
    os.rename(building, folder)
    return folder, fd


def remove_stale_metrics_dirs(parent: Path) -> None:
    """Folders of supervisors that were killed (SIGKILL leaves no chance to remove them): those
    whose lock nobody holds. A lock, not a pid: in containers that share /tmp, every supervisor
    may be PID 1. A folder without a lock file is from a version before the lock, and goes when
    the pid in its name is no process (or is this one)."""
    for folder in parent.glob(f"{METRICS_DIR_PREFIX}*"):
        try:
            if not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / METRICS_LOCK, os.O_RDWR)
        except FileNotFoundError:
            if not _unlocked_folder_is_stale(folder):
                continue
        except OSError:
            continue
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its supervisor runs
                continue
            finally:
                os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


def _unlocked_folder_is_stale(folder: Path) -> bool:
    pid = folder.name[len(METRICS_DIR_PREFIX):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
