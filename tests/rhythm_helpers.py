"""Test helpers for lm2a.rhythm: the papers' single onset call, and the whole rhythm row of two
waveforms in one call."""
import numpy as np

from lm2a.rhythm import (D2M_PEAKS, MOTION_FPS, PAPER_ONSET_HOP, PAPER_SR, audio_rhythm, pick_onsets,
                         rhythm_scores, wav_onset_envelope)


def onset_times_from_audio(wav, sr: int = PAPER_SR, peaks: dict = D2M_PEAKS) -> np.ndarray:
    """Onset times (s) of a waveform: librosa.onset.onset_detect(y, sr=22050, units='time', **peaks),
    the call of D2M-GAN's (peaks=D2M_PEAKS) and LORIS's (peaks=LORIS_PEAKS) beats_scores.py, done
    the way audio_rhythm does it (one envelope, picked with the paper's peaks)."""
    return pick_onsets(wav_onset_envelope(wav, sr), peaks) * PAPER_ONSET_HOP / PAPER_SR


def rhythm_metrics(real_wav, gen_wav, motion=None, sr: int = PAPER_SR, fps: float = MOTION_FPS) -> dict:
    """Every RHYTHM_KEYS score of a generated waveform against the real one and the clip's motion:
    rhythm_scores of the two waveforms' audio_rhythm (what val.py computes in two steps, analysing
    each waveform once)."""
    return rhythm_scores(audio_rhythm(real_wav, sr, fps), audio_rhythm(gen_wav, sr, fps), motion, fps)
