"""Issue 23, part 2: one run per output folder (lm2a/lock.py: a second run refuses at once, a stale lock
is taken over, the lock goes at exit) and a DDP rank that stops answering (lm2a/run.py: the collective
timeout ends the run with a line naming that rank, nothing half saved, no process left)."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import preprocess
import sample
import train
import val
from lm2a import REPO_ROOT
from lm2a import run as R
from lm2a.checkpoint import load_checkpoint
from lm2a.lock import (EXIT_FOLDER_IN_USE, LOCK_NAME, FolderInUse, FolderLock, holder_record, proc_stat,
                       read_lock)
from tests.fakeclips import write_fake_clips

HOST = socket.gethostname()


def write_lock(folder, pid, host=HOST, proc_start=None, command="python train.py --save_dir x"):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host, "started": "2026-01-02T03:04:05+00:00", "command": command,
              "proc_start": proc_start}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return record


def gone_pid():
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    """A live process of this host (another program than this one) and its /proc start time."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc.pid, proc_stat(proc.pid)[1]
    proc.kill()
    proc.wait()


def test_second_lock_refuses_naming_the_first(tmp_path):
    first = FolderLock(tmp_path / "out", "sample.py").acquire()
    held = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == HOST and held["command"] == holder_record()["command"]
    assert held["proc_start"] == proc_stat(os.getpid())[1] and held["started"][:4].isdigit()
    with pytest.raises(FolderInUse) as e:
        FolderLock(tmp_path / "out", "val.py").acquire()
    msg = str(e.value)
    assert msg.startswith(f"val.py: {tmp_path / 'out'} is in use by another run: pid {os.getpid()} on host {HOST}, "
                          f"started {held['started']}")
    assert str(tmp_path / "out" / LOCK_NAME) in msg and "--break_lock" in msg and "\n" not in msg
    first.release()
    assert not (tmp_path / "out").exists()  # the lock made the folder and nothing else was written
    with FolderLock(tmp_path / "out", "val.py"):
        assert read_lock(tmp_path / "out" / LOCK_NAME)["pid"] == os.getpid()


def test_stale_locks_are_taken_over_with_a_note(tmp_path, capsys, sleeper):
    dead = gone_pid()
    write_lock(tmp_path / "a", dead)
    with FolderLock(tmp_path / "a", "preprocess"):
        assert read_lock(tmp_path / "a" / LOCK_NAME)["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err.startswith(f"preprocess: note: took over {tmp_path / 'a' / LOCK_NAME} of pid {dead} on host {HOST}")
    assert err.endswith(f": process {dead} no longer exists\n") and len(err.splitlines()) == 1
    pid, start = sleeper  # its pid, but another start time: the pid now belongs to another program
    write_lock(tmp_path / "b", pid, proc_start=start - 1)
    with FolderLock(tmp_path / "b", "train.py"):
        pass
    assert f"pid {pid} now belongs to another program" in capsys.readouterr().err
    assert list((tmp_path / "b").iterdir()) == []


def test_a_live_or_foreign_lock_is_kept_unless_broken(tmp_path, capsys, sleeper):
    pid, start = sleeper
    write_lock(tmp_path / "a", pid, proc_start=start)
    with pytest.raises(FolderInUse, match=f"pid {pid} on host {HOST}"):
        FolderLock(tmp_path / "a", "train.py").acquire()
    other = write_lock(tmp_path / "b", gone_pid(), host="gpu-node-7")  # a dead pid, but on another host
    with pytest.raises(FolderInUse) as e:
        FolderLock(tmp_path / "b", "train.py").acquire()
    assert f"on host gpu-node-7, started {other['started']}" in str(e.value)
    assert "another host, so it is never taken over automatically" in str(e.value)
    assert read_lock(tmp_path / "b" / LOCK_NAME) == other
    with FolderLock(tmp_path / "b", "train.py", break_lock=True):
        assert read_lock(tmp_path / "b" / LOCK_NAME)["pid"] == os.getpid()
    assert "--break_lock given" in capsys.readouterr().err


def test_one_of_several_takes_a_stale_lock(tmp_path):
    """Threads of one process racing for a stale lock: one takes it, the others see it held (by this pid)."""
    write_lock(tmp_path, gone_pid())
    results, start = [], threading.Barrier(4)

    def take():
        start.wait()
        try:
            results.append(FolderLock(tmp_path, "t").acquire())
        except FolderInUse as e:
            results.append(str(e))
    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results if isinstance(r, FolderLock)]
    assert len(held) == 1 and sum(f"pid {os.getpid()}" in r for r in results if isinstance(r, str)) == 3
    held[0].release()
    assert not (tmp_path / LOCK_NAME).exists() and not (tmp_path / (LOCK_NAME + ".takeover")).exists()


def test_the_lock_goes_when_the_code_raises_or_the_process_exits(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error):
            with FolderLock(tmp_path, "t"):
                assert (tmp_path / LOCK_NAME).is_file()
                raise error("inside")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
    code = ("import sys; from lm2a.lock import FolderLock; FolderLock(sys.argv[1], 't').acquire(); "
            "print(open(sys.argv[1] + '/.lm2a.lock').read())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["pid"] != os.getpid()  # the child held it ...
    assert not (tmp_path / LOCK_NAME).exists()  # ... and atexit removed it


def test_every_stage_refuses_a_folder_in_use_before_any_work(tmp_path, capsys, sleeper):
    """The lock is checked before data, checkpoints or models are read: every input below is missing
    (exit 2 once the lock is broken)."""
    pid, start = sleeper
    missing = str(tmp_path / "missing")
    runs = {
        "preprocess": lambda d, *x: preprocess.main(["--data_root", missing, "--out_dir", d, "--quiet", *x]),
        "train.py": lambda d, *x: train.main(["--npz_dir", missing, "--val_npz_dir", "", "--save_dir", d, *x]),
        "sample.py": lambda d, *x: sample.main(["--ckpt", missing, "--npz_dir", missing, "--out_dir", d, *x]),
        "val.py": lambda d, *x: val.main(["--ckpt", missing, "--npz_dir", missing, "--out_dir", d, "--quiet", *x]),
    }
    for script, main in runs.items():
        out = tmp_path / script
        write_lock(out, pid, proc_start=start)
        assert main(str(out)) == EXIT_FOLDER_IN_USE
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"{script}: {out} is in use by another run: pid {pid} on host {HOST}")
        assert len(err.splitlines()) == 1 and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
        assert main(str(out), "--break_lock") == 2  # taken over, then the missing input
        assert "--break_lock given" in capsys.readouterr().err
        assert not (out / LOCK_NAME).exists()


def test_collective_timeout_setting(monkeypatch):
    monkeypatch.delenv(R.TIMEOUT_ENV, raising=False)
    assert R.collective_timeout_s() == R.COLLECTIVE_TIMEOUT_S == 300.0
    monkeypatch.setenv(R.TIMEOUT_ENV, "2.5")
    assert R.collective_timeout_s() == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(R.TIMEOUT_ENV, bad)
        with pytest.raises(SystemExit, match=f"{R.TIMEOUT_ENV}='{bad}'"):
            R.collective_timeout_s()
    # only a timed-out collective of several processes is a lost rank
    assert R.lost_ranks(RuntimeError("Timed out waiting 2000ms for recv"), 0, 1, "ck") is None
    assert R.lost_ranks(RuntimeError("Connection closed by peer"), 0, 2, "ck") is None


HANG = """
import os, signal, sys, time
from pathlib import Path
import torch
import train
rank, hung = int(os.environ["RANK"]), int(sys.argv[2])
Path(sys.argv[1], f"pid{rank}").write_text(str(os.getpid()))
real_step = train.train_step
def step(parts, batch, step, stop=False):
    if rank == hung and step == 3:  # stuck past the timeout (torchrun's SIGTERM ends it, not train's handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(300)
    return real_step(parts, batch, step, stop)
train.train_step = step
torch.set_num_threads(1)
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("hung", [1, 0])
def test_ddp_rank_that_stops_answering_ends_the_run_naming_it(tmp_path, capsys, hung):
    write_fake_clips(tmp_path / "train", n=8, mel_frames=64, lyric_dim=32, seed=0)
    (tmp_path / "hang.py").write_text(HANG)
    save_dir = tmp_path / "ckpt"
    tiny = ["--base_dim", "16", "--dim_mults", "1,2", "--cond_dim", "16", "--time_emb_dim", "16",
            "--num_res_blocks", "1", "--num_mid_blocks", "1", "--num_heads", "2", "--timesteps", "100",
            "--no_progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "hang.py"), str(tmp_path), str(hung), "--npz_dir", str(tmp_path / "train"), "--val_npz_dir", "",
           "--save_dir", str(save_dir), *tiny, "--max_steps", "6", "--batch_size", "2", "--save_every", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **{R.TIMEOUT_ENV: "2"})
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds, out = time.monotonic() - t0, proc.stdout + proc.stderr
    assert proc.returncode != 0 and seconds < 60, out
    lines = [x for x in out.splitlines() if "did not answer" in x]
    assert lines == [f"train.py: a collective timed out after 2 s ({R.TIMEOUT_ENV}): rank {hung} did not answer; the "
                     f"run ends, saving nothing more (rank {1 - hung} reporting; the checkpoints in {save_dir} stay as last "
                     f"written): check that rank's process and machine, then continue with --resume"], out
    assert f"exitcode  : {train.EXIT_RANK_LOST} " in out  # rank 0's exit code, as torchrun reports it
    for rank in (0, 1):  # no process left behind
        with pytest.raises(ProcessLookupError):
            os.kill(int((tmp_path / f"pid{rank}").read_text()), 0)
    names = sorted(p.name for p in save_dir.iterdir() if not p.name.startswith("events."))
    steps = ["step_00000001.pt", "step_00000002.pt", "step_00000003.pt"]
    assert [load_checkpoint(save_dir / n)["step"] for n in steps] == [1, 2, 3]  # no last.pt, no temp file
    if hung == 1:  # rank 0 ended normally: its lock is gone
        assert names == steps + ["train_log.csv"]
    else:  # rank 0 was killed holding the lock: the next run takes it over
        assert names == [LOCK_NAME] + steps + ["train_log.csv"]
        assert read_lock(save_dir / LOCK_NAME)["pid"] == int((tmp_path / "pid0").read_text())
        with FolderLock(save_dir, "train.py"):
            pass
        assert "no longer exists" in capsys.readouterr().err and not (save_dir / LOCK_NAME).exists()
