"""One run per output folder: preprocess.py (--out_dir), train.py (--save_dir, rank 0), sample.py and
val.py (--out_dir) hold an exclusive lock file <folder>/.lm2a.lock while they write there, so a second
run on the same folder refuses at once instead of computing and writing everything a second time.

    with FolderLock(args.out_dir, "sample.py", break_lock=args.break_lock):
        ...      # FolderInUse (exit code EXIT_FOLDER_IN_USE) if another live run holds the folder

The lock is JSON {pid, host, started, command, proc_start}, created atomically (O_CREAT | O_EXCL) and
removed on leaving the `with` (also when the code inside raises, on Ctrl-C and on train.py's SIGTERM
path) or at interpreter exit (atexit). A process killed outright (SIGKILL, an unhandled SIGTERM) leaves
it behind: the next run on the same host takes it over with a note when that pid no longer exists or
now belongs to another program (its start time, /proc/<pid>/stat field 22, differs from proc_start).
A lock written on another host is never taken over automatically (this host cannot see its
processes): --break_lock takes over any lock, for when the run it names is known to be gone.
"""
import atexit
import json
import os
import shlex
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

LOCK_NAME = ".lm2a.lock"
EXIT_FOLDER_IN_USE = 75      # EX_TEMPFAIL (sysexits.h): the folder is busy, try again later
BREAK_FLAG = "--break_lock"
READ_TRIES = 20              # a lock just created holds no JSON for a moment: re-read it this often ...
READ_PAUSE_S = 0.05          # ... this far apart before calling it unreadable
ACQUIRE_TRIES = 10           # rounds of create / judge the holder / take over a stale lock
TAKEOVER_STALE_S = 10.0      # a takeover marker older than this was left by a process that died mid-takeover


class FolderInUse(Exception):
    """Another run holds the folder (the message names it and says what to do)."""


def add_break_lock_flag(parser):
    parser.add_argument(BREAK_FLAG, action="store_true",
                        help=f"take over the output folder's {LOCK_NAME} even if the run it names looks alive or "
                             f"ran on another host (only when that run is known to be gone)")


def proc_stat(pid):
    """(state letter, start time in clock ticks since boot) of `pid` from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0], field 22 fields[19]
    return fields[0], int(fields[19])


def holder_record():
    """What the lock says about this process."""
    stat = proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv), "proc_start": stat[1] if stat else None}


def read_lock(path, tries=READ_TRIES):
    """The lock's JSON (a dict), None if there is no lock, {} if it stays unreadable."""
    for i in range(tries):
        try:
            holder = json.loads(Path(path).read_text())
            if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and holder["pid"] > 0:
                return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        if i + 1 < tries:
            time.sleep(READ_PAUSE_S)
    return {}


def why_gone(holder):
    """Why the run a lock names is certainly gone (a reason to take the lock over), or None while it may
    still run: another host, an unreadable lock, or a live process with the recorded start time."""
    if not holder or holder.get("host") != socket.gethostname():
        return None
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} no longer exists"
    except PermissionError:
        pass  # it exists, under another user
    stat = proc_stat(pid)
    if stat is not None and stat[0] == "Z":
        return f"process {pid} has exited"
    if stat is not None and holder.get("proc_start") is not None and stat[1] != holder["proc_start"]:
        return f"pid {pid} now belongs to another program"
    return None


def describe_holder(holder):
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
            f"command {holder.get('command')!r}")


def in_use_message(script, folder, path, holder):
    """The one line of a refusal: who holds the folder and what to do."""
    if not holder:
        return (f"{script}: {folder} is in use: its lock {path} is unreadable (a run starting right now, or one "
                f"that died while writing it); wait, or if no run uses {folder}, remove {path} or pass {BREAK_FLAG}")
    other_host = holder.get("host") != socket.gethostname()
    where = (" (on another host, so it is never taken over automatically: this host cannot see whether it "
             "still runs)" if other_host else "")
    return (f"{script}: {folder} is in use by another run: {describe_holder(holder)}{where}; wait for it to "
            f"finish, or if that run is gone, remove {path} or pass {BREAK_FLAG}")


class FolderLock:
    """The exclusive lock of an output folder (module docstring); a context manager. enabled=False: a
    no-op (train.py's ranks other than 0)."""

    def __init__(self, folder, script, break_lock=False, enabled=True):
        self.folder, self.script, self.break_lock, self.enabled = Path(folder), script, break_lock, enabled
        self.path = self.folder / LOCK_NAME
        self.record = None      # the JSON this process wrote, while it holds the lock
        self.created = False    # the folder did not exist before: removed again on release if left empty

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        """Takes the lock (over a stale one, with a note) -> self; FolderInUse if a live run holds it."""
        if not self.enabled or self.record is not None:
            return self
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(ACQUIRE_TRIES):
            if self._create():
                atexit.register(self.release)
                return self
            holder = read_lock(self.path)
            if holder is None:
                continue  # released meanwhile
            reason = why_gone(holder) or (f"{BREAK_FLAG} given" if self.break_lock else None)
            if reason is None:
                raise FolderInUse(in_use_message(self.script, self.folder, self.path, holder))
            self._take_over(holder, reason)
        raise FolderInUse(f"{self.script}: could not take {self.path} in {ACQUIRE_TRIES} tries: other runs are "
                          f"starting on {self.folder} right now; start one run per folder")

    def release(self):
        """Removes the lock if this process holds it (not a lock that another run took over since)."""
        record, self.record = self.record, None
        atexit.unregister(self.release)
        if record is None or record["pid"] != os.getpid():  # a forked child does not own its parent's lock
            return
        if read_lock(self.path, tries=1) == record:
            self.path.unlink(missing_ok=True)
        if self.created:
            try:
                self.folder.rmdir()  # only if the run left nothing in it
            except OSError:
                pass

    def _create(self):
        record = holder_record()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        self.record = record
        return True

    def _take_over(self, holder, reason):
        """Removes the stale lock `holder` if it is still the one there; a marker file makes the check and
        the removal one step, so two runs taking over at once cannot remove each other's fresh lock."""
        marker = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime > TAKEOVER_STALE_S:
                    marker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(READ_PAUSE_S)
            return
        try:
            if read_lock(self.path) == holder:
                self.path.unlink()
                print(f"{self.script}: note: took over {self.path} of {describe_holder(holder)}: {reason}",
                      file=sys.stderr)
        finally:
            marker.unlink(missing_ok=True)
