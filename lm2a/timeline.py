"""The lyric timeline of a song (sliced.json) and the time origin of its motion (smplfull.json).

sliced.json is an ordered object "mm:ss.fff" -> lyric line (also "hh:mm:ss.fff" and plain seconds);
every key but the last starts a 6 s clip, the last one only marks the end. In JustLMD, motion frame
000000 is at the time of the FIRST lyric key (the dataset's own loader cuts dance at
t - t_first_lyric): MOTION_T0_RULES names that rule "first_lyric" (the alternative, "zero", puts
frame 0 at 0 s). Stage 1 (preprocess.py) and whole-dance generation (lm2a/longform.py) both use
motion_t0_seconds, so the rule lives here once.
"""
import json
import math
import re
from pathlib import Path

MOTION_T0_RULES = ("first_lyric", "zero")
# the latest key time read: clip names hold the start in 8 zero-padded digits of ms (lm2a.clipio.clip_name)
MAX_KEY_SECONDS = 99999.999


def parse_time(key):
    """'mm:ss.fff', 'hh:mm:ss.fff' or plain seconds -> float seconds; None when not a time (or not a
    finite one up to MAX_KEY_SECONDS)."""
    parts = str(key).strip().split(":")
    if len(parts) > 3 or not all(re.fullmatch(r"[0-9]+(\.[0-9]+)?", p) for p in parts):
        return None
    if any("." in p for p in parts[:-1]):
        return None
    nums = [float(p) for p in parts]
    if len(nums) > 1 and nums[-1] >= 60 or (len(nums) == 3 and nums[1] >= 60):
        return None
    t = sum(v * 60 ** i for i, v in enumerate(reversed(nums)))
    return t if math.isfinite(t) and t <= MAX_KEY_SECONDS else None


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order: repeated keys are kept, not merged."""


def read_json_pairs(path, what):
    """A JSON file whose top level is an object -> its (key, value) pairs in file order (every object
    in it is a _Pairs list; a UTF-8 BOM is allowed). Raises ValueError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"), object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from e
    except RecursionError as e:
        raise ValueError(f"{path}: JSON nested too deeply to be {what}") from e
    if not isinstance(data, _Pairs):
        raise ValueError(f"{path}: expected {what}, got {type(data).__name__}")
    return data


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lyric(key, text, skipped):
    """The lyric line of a key's value: a string as is (a lone surrogate escape such as "\\ud800", which no
    text encoder takes, replaced by U+FFFD with a note in `skipped`), null as no lyric; any other value
    (a number, a list, an object) is no lyric, with a note in `skipped`."""
    if isinstance(text, str) and _LONE_SURROGATE.search(text):
        skipped.append(f"key {key!r}: the lyric holds a lone surrogate escape (\\ud800-\\udfff, not a character); "
                       f"replaced by U+FFFD")
        return _LONE_SURROGATE.sub("\ufffd", text)
    if isinstance(text, str) or text is None:
        return text or ""
    kind = "object" if isinstance(text, _Pairs) else type(text).__name__
    skipped.append(f"key {key!r}: the lyric is a {kind}, not text; the clip gets no lyric")
    return ""


def read_lyric_timeline(path):
    """sliced.json -> (sorted [(time_s, text)], [skipped-key reasons]). A key that is not a time, or
    repeats the time of an earlier key to the millisecond (the same key twice included), is skipped
    with its reason; the first one stands. Raises ValueError with the file name on unreadable JSON or
    a non-object."""
    pairs = read_json_pairs(path, "an object 'mm:ss.fff' -> lyric")
    entries, skipped, seen = [], [], set()
    for key, text in pairs:
        t = parse_time(key)
        if t is None:
            skipped.append(f"key {key!r} is not a time (mm:ss.fff, hh:mm:ss.fff or seconds, "
                           f"at most {MAX_KEY_SECONDS} s)")
            continue
        ms = round(t * 1000)  # clips are named by their start in ms: keys within 1 ms would share a name
        if ms in seen:
            skipped.append(f"key {key!r} repeats time {t:.3f} s (to the ms)")
            continue
        seen.add(ms)
        entries.append((t, _lyric(key, text, skipped)))
    if any(b[0] < a[0] for a, b in zip(entries, entries[1:])):
        skipped.append("keys were not in time order; sorted")
        entries.sort(key=lambda e: e[0])
    return entries, skipped


def motion_t0_seconds(entries, rule="first_lyric"):
    """Song time (s) of motion frame 0 under `rule` (MOTION_T0_RULES) for a song whose lyric
    timeline is `entries` (read_lyric_timeline): the first key's time for "first_lyric", 0 for "zero"."""
    if rule not in MOTION_T0_RULES:
        raise ValueError(f"unknown motion time origin {rule!r}: choose one of {MOTION_T0_RULES}")
    if rule == "zero":
        return 0.0
    if not entries:
        raise ValueError("motion time origin 'first_lyric' needs at least one lyric key")
    return float(entries[0][0])
