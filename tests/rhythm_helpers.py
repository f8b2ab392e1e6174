"""Test helpers for lm2a.rhythm: the whole rhythm row of two waveforms in one call."""
from lm2a.rhythm import MOTION_FPS, PAPER_SR, audio_rhythm, rhythm_scores


def rhythm_metrics(real_wav, gen_wav, motion=None, sr: int = PAPER_SR, fps: float = MOTION_FPS) -> dict:
    """Every RHYTHM_KEYS score of a generated waveform against the real one and the clip's motion:
    rhythm_scores of the two waveforms' audio_rhythm (what val.py computes in two steps, analysing
    each waveform once)."""
    return rhythm_scores(audio_rhythm(real_wav, sr, fps), audio_rhythm(gen_wav, sr, fps), motion, fps)
