"""Issue 23, part 1: nothing is lost when a checkpoint save or a resume goes wrong. A full disk (or
quota) during an atomic write (checkpoint, npz, text) leaves the previous file and no temp file and
says in one line which file, how much it needed and how much is free; train.py stops with
EXIT_DISK_FULL and --resume continues. A folder whose newest checkpoints are truncated resumes (and
samples) from the newest readable one, naming those it skips. --resume --save_dir RUN alone takes
the data folders the run was started with, from any folder. A save folder short of room is warned of."""
import errno
import os
import shutil
import tempfile
from collections import namedtuple

import numpy as np
import pytest
import torch

import sample
import train
from lm2a.checkpoint import (CHECKPOINT_KIND, CheckpointError, load_checkpoint, save_checkpoint,
                             tensor_bytes)
from lm2a.clipio import DiskFullError, fmt_bytes, save_npz_atomic, write_text_atomic
from tests.fakeclips import write_fake_clips

TINY = ["--base_dim", "16", "--dim_mults", "1,2", "--cond_dim", "16", "--time_emb_dim", "16",
        "--num_res_blocks", "1", "--num_mid_blocks", "1", "--num_heads", "2", "--timesteps", "100",
        "--no_progress", "--batch_size", "4", "--sample_clips", "0", "--val_every", "0"]
FREE = 123_456_789  # what the monkeypatched shutil.disk_usage reports
Usage = namedtuple("Usage", "total used free")


# the tiny training set (8 train / 3 val clips of 64 mel frames) and one torch thread, as test_train.py's
from tests.test_train import clips, one_thread  # noqa: E402,F401  (pytest fixtures)


class FillingFile:
    """A file on a disk with `room` bytes (chars in text mode) left: a write that does not fit writes
    what fits and raises OSError(err), as the kernel's write does."""

    def __init__(self, f, room, err):
        self.f, self.room, self.err = f, room, err

    def write(self, data):
        if len(data) > self.room:
            self.f.write(data[:self.room])
            self.room = 0
            raise OSError(self.err, os.strerror(self.err))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk(monkeypatch, room, err=errno.ENOSPC, only=""):
    """Every atomic write of a file whose name starts with `only` meets a disk with `room` bytes left;
    shutil.disk_usage reports FREE bytes free."""
    real_mkstemp, real_fdopen, full = tempfile.mkstemp, os.fdopen, set()

    def mkstemp(*a, prefix="", **k):
        fd, name = real_mkstemp(*a, prefix=prefix, **k)
        if prefix.startswith("." + only):
            full.add(fd)
        return fd, name

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        return FillingFile(f, room, err) if fd in full else f
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * FREE, 9 * FREE, FREE))


def tiny_ckpt(step, n):
    return {"kind": CHECKPOINT_KIND, "step": step, "w": torch.arange(n, dtype=torch.float32)}


@pytest.mark.parametrize("err, full", [(errno.ENOSPC, "the disk is full"),
                                       (errno.EDQUOT, "the disk quota is full")])
def test_disk_full_during_a_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch, err, full):
    path = save_checkpoint(tiny_ckpt(5, 1000), tmp_path / "last.pt")
    before = path.read_bytes()
    fill_disk(monkeypatch, room=3000, err=err)
    new = tiny_ckpt(6, 40_000)  # its tensors (160 000 bytes) are more than the previous file's size
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(new, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]  # no temp file left
    e = caught.value
    assert (e.errno, e.path, e.needed, e.written, e.free) == (err, path, tensor_bytes(new), 3000, FREE)
    line = str(e)
    assert "\n" not in line and line.startswith(f"{path}: not written, {full}")
    assert f"needs about {fmt_bytes(160_000)} ({fmt_bytes(3000)} written when it filled)" in line
    assert f"{fmt_bytes(FREE)} free in {tmp_path}; the previous file is intact" in line
    assert line.endswith("free space there or choose another --save_dir; train.py --resume continues from the "
                         "newest intact checkpoint")
    assert isinstance(e.__cause__, RuntimeError)  # torch.save's 'unexpected pos', the OSError behind it


def test_disk_full_during_npz_and_text_writes(tmp_path, monkeypatch):
    npz, text = tmp_path / "clip.npz", tmp_path / "report.md"
    save_npz_atomic(npz, mel=np.zeros((2, 3), np.float32))
    write_text_atomic(text, "old report\n")
    old_npz = npz.read_bytes()
    fill_disk(monkeypatch, room=100)
    with pytest.raises(DiskFullError) as caught:
        save_npz_atomic(npz, mel=np.ones((80, 500), np.float32))
    line = str(caught.value)
    assert line.startswith(f"{npz}: not written, the disk is full") and "\n" not in line
    assert f"needs about {fmt_bytes(80 * 500 * 4)} ({fmt_bytes(100)} written when it filled)" in line
    assert f"{fmt_bytes(FREE)} free" in line and line.endswith("free space there or write to another folder")
    with pytest.raises(DiskFullError, match=rf"report\.md: not written, the disk is full .*: the file needs about "
                                            rf"{fmt_bytes(2000)} \(200 B written when it filled\)"):
        write_text_atomic(text, "é" * 1000)  # 2000 bytes in UTF-8; the 100 characters that fit: 200 bytes
    assert npz.read_bytes() == old_npz and text.read_text() == "old report\n"
    assert sorted(os.listdir(tmp_path)) == ["clip.npz", "report.md"]


def train_args(*argv):
    return train.build_parser().parse_args([*map(str, argv), *TINY])


def test_train_stops_cleanly_on_a_full_disk_and_resumes(clips, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    fill_disk(monkeypatch, room=10_000, only="step_00000004.pt")
    result = train.train(train_args("--npz_dir", clips / "train", "--val_npz_dir", "", "--save_dir", run,
                                    "--max_steps", 6, "--save_every", 2))
    assert result["exit_code"] == train.EXIT_DISK_FULL == 4 and result["step"] == 4
    line = next(x for x in capsys.readouterr().out.splitlines() if "not written" in x)
    assert line.startswith(f"train.py: stopped at step 4: {run / 'step_00000004.pt'}: not written, the disk is "
                           f"full") and f"{fmt_bytes(FREE)} free in {run}" in line
    assert sorted(p.name for p in run.glob("*.pt")) == ["step_00000002.pt"] and not list(run.glob(".*"))
    monkeypatch.undo()
    resumed = train.train(train.build_parser().parse_args(["--resume", "--save_dir", str(run), "--no_progress"]))
    assert resumed["exit_code"] == 0 and resumed["step"] == 6
    assert "resuming from" in capsys.readouterr().out and load_checkpoint(run / "last.pt")["step"] == 6


def test_truncated_newest_checkpoints_are_skipped(clips, tmp_path, monkeypatch, capsys):
    """A run started from the clips' folder with relative --npz_dir; its newest step file and last.pt cut
    short; sample.py --ckpt RUN and train.py --resume --save_dir RUN (no data flags, from elsewhere) use
    the older intact step file."""
    run = tmp_path / "run"
    monkeypatch.chdir(clips)
    assert train.train(train_args("--npz_dir", "train", "--val_npz_dir", "val", "--save_dir", run,
                                  "--max_steps", 4, "--save_every", 2, "--keep", 2))["exit_code"] == 0
    for name in ("step_00000004.pt", "last.pt"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:len(data) // 2])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()

    assert sample.main(["--ckpt", str(run), "--npz_dir", str(clips / "val"), "--out_dir", str(tmp_path / "gen"),
                        "--steps", "2", "--quiet"]) == 0
    skipped = [x for x in capsys.readouterr().err.splitlines() if x.startswith("lm2a: skipping")]
    assert [x.split(":")[1][len(" skipping "):] for x in skipped] == [str(run / "last.pt"),
                                                                      str(run / "step_00000004.pt")]
    assert "cannot be read (RuntimeError: PytorchStreamReader failed reading zip archive" in skipped[0]
    with np.load(next((tmp_path / "gen").glob("*_gen.npz"))) as g:
        assert int(g["ckpt_step"]) == 2 and str(g["ckpt_path"]).endswith("step_00000002.pt")

    with pytest.raises(CheckpointError, match=r"step_00000004\.pt: cannot read .* Readable checkpoints in .*run: "
                                              r"step_00000002\.pt \(step 2\)"):
        load_checkpoint(run / "step_00000004.pt")  # a file named explicitly stays an error

    result = train.train(train.build_parser().parse_args(["--resume", "--save_dir", str(run), "--max_steps", "3",
                                                          "--save_every", "1", "--keep", "1", "--no_progress"]))
    out = capsys.readouterr().out
    assert result["exit_code"] == 0 and result["step"] == 3
    assert f"lm2a: skipping {run / 'last.pt'}: cannot be read" in out
    assert f"lm2a: skipping {run / 'step_00000004.pt'}: cannot be read" in out
    assert f"train.py: resuming from {run / 'step_00000002.pt'} (step 2)" in out
    saved = load_checkpoint(run / "last.pt")["train_args"]  # the folders, absolute: resumable from anywhere
    assert (saved["npz_dir"], saved["val_npz_dir"]) == ([str(clips / "train")], [str(clips / "val")])
    # keep-K pruning counts the step files up to the run's step: step_3 kept, the stale step_4 left alone
    assert sorted(p.name for p in run.glob("step_*.pt")) == ["step_00000003.pt", "step_00000004.pt"]


def test_resume_alone_takes_an_older_checkpoints_relative_folders(clips, tmp_path, monkeypatch, capsys):
    """A checkpoint of an older train.py: one folder as a string, relative to where the run started
    (its --save_dir relative too); --resume --save_dir RUN from another folder finds them."""
    monkeypatch.chdir(clips.parent)
    rel = os.path.join(clips.name, "train"), os.path.join(clips.name, "val")
    assert train.train(train_args("--npz_dir", rel[0], "--val_npz_dir", rel[1], "--save_dir", "oldrun",
                                  "--max_steps", 2))["exit_code"] == 0
    ckpt = torch.load("oldrun/last.pt", weights_only=True)
    ckpt["train_args"].update(npz_dir=rel[0], val_npz_dir=rel[1], save_dir="oldrun")
    torch.save(ckpt, "oldrun/last.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = train.train(train.build_parser().parse_args(["--resume", "--save_dir", str(clips.parent / "oldrun"),
                                                          "--max_steps", "3", "--no_progress"]))
    assert result["exit_code"] == 0 and result["step"] == 3
    assert f"8 train clips: {clips / 'train'} (8 clips" in capsys.readouterr().out
    saved = load_checkpoint(clips.parent / "oldrun" / "last.pt")["train_args"]
    assert (saved["npz_dir"], saved["val_npz_dir"]) == ([str(clips / "train")], [str(clips / "val")])


def test_warns_when_the_save_folder_is_short_of_room(clips, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))
    run = tmp_path / "run"
    assert train.train(train_args("--npz_dir", clips / "train", "--val_npz_dir", "", "--save_dir", run,
                                  "--max_steps", 1))["exit_code"] == 0
    warning = [x for x in capsys.readouterr().out.splitlines() if "warning" in x]
    assert len(warning) == 1 and warning[0].startswith(f"train.py: warning: {run} has 1000 B free, less than the ")
    assert warning[0].endswith("free space there or choose another --save_dir")
    about = float(warning[0].split("checkpoints of about ")[1].split(" MiB")[0]) * 2**20
    assert 0.85 < about / (run / "last.pt").stat().st_size <= 1.0  # the estimate: weights, EMA, Adan state

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, 10**12))
    assert train.train(train_args("--npz_dir", clips / "train", "--val_npz_dir", "", "--save_dir", tmp_path / "b",
                                  "--max_steps", 1))["exit_code"] == 0
    assert "warning" not in capsys.readouterr().out
