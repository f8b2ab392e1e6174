"""Waveforms for stage 5 (val.py): the real, generated and unconditional log-mels of a split go
through ONE vocoder (Griffin-Lim by default, a BigVGAN folder when given), so that real and generated
audio are compared on equal terms, and are written as 16-bit wav files

    OUT/audio/real/<name>.wav   OUT/audio/generated/<name>.wav   OUT/audio/uncond/<name>.wav

(report.html plays them). The rhythm metrics (lm2a.rhythm) are computed on the files as read back,
at 22050 Hz: exactly the signal the papers' scripts get when they librosa.load a wav file, so anyone
can recompute them from OUT/audio/.
"""
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from lm2a.audio import write_wav
from lm2a.melconfig import MelConfig
from lm2a.rhythm import audio_rhythm
from lm2a.vocoder import VocoderUnavailable, check_mel_compat, load_bigvgan, vocode_mels

AUDIO_SETS = ("real", "generated", "uncond")
GL_ITERS = 64       # Griffin-Lim iterations (lm2a.vocoder.griffin_lim's default)
GL_SEED = 0         # Griffin-Lim's random initial phase: the same for every mel
AUDIO_DIR = "audio"


def open_vocoder(vocoder, mel_cfg, device="cpu", gl_iters=GL_ITERS, notes=None):
    """-> (BigVGAN model or None for Griffin-Lim, description dict for summary.json). `vocoder`: ""
    for Griffin-Lim, else a BigVGAN folder / name / hub id (lm2a.vocoder.load_bigvgan). A BigVGAN
    whose mel config differs from the clips' is refused (MelConfigMismatch, a ValueError); missing
    weights fall back to Griffin-Lim with a note, as testwav.py does."""
    griffin = {"vocoder": "griffin-lim", "gl_iters": int(gl_iters), "gl_seed": GL_SEED}
    if not vocoder:
        return None, griffin
    try:
        model, vocoder_cfg = load_bigvgan(vocoder, device)
    except VocoderUnavailable as e:
        if notes is not None:
            notes.append(f"--vocoder {vocoder}: {e}; the audio metrics use Griffin-Lim instead")
        return None, dict(griffin, vocoder_requested=str(vocoder))
    check_mel_compat(mel_cfg, vocoder_cfg, npz_name="clips", vocoder_name=str(vocoder))
    return model, {"vocoder": "bigvgan", "path": str(Path(vocoder).resolve()) if Path(vocoder).exists()
                   else str(vocoder)}


def read_wav(path):
    """-> float32 (samples,), as librosa.load(path, sr=None) reads it."""
    wav, _ = sf.read(str(path), dtype="float32", always_2d=False)
    return wav


def vocode_sets(mel_sets, mel_cfg, out_dir, model=None, gl_iters=GL_ITERS, progress=True):
    """mel_sets {set: {name: log-mel (80, T)}} (set None is left out) -> {set: {name: path of the
    wav}} under out_dir/<set>/, and {set: {name: the waveform as read back from that file}}. Each
    mel is vocoded once. mel_cfg: the mels' MelConfig."""
    sr = MelConfig.parse(mel_cfg).sampling_rate
    paths, wavs = {}, {}
    sets = [(k, v) for k, v in mel_sets.items() if v]
    total = sum(len(v) for _, v in sets)
    with tqdm(total=total, desc="vocoding", unit="clip", disable=not progress or not total) as bar:
        for kind, mels in sets:
            paths[kind], wavs[kind] = {}, {}
            for name, mel in mels.items():   # one at a time: the bar moves, memory stays flat
                wav = vocode_mels([mel], mel_cfg, model=model, n_iter=gl_iters, seed=GL_SEED)[0]
                path = write_wav(Path(out_dir) / kind / f"{name}.wav", wav, sr)
                paths[kind][name] = path
                wavs[kind][name] = read_wav(path)
                bar.update()
    return paths, wavs


def analyse_sets(wavs, sr, fps, progress=True):
    """{set: {name: waveform}} -> {set: {name: lm2a.rhythm.audio_rhythm(...)}} (onsets and music
    beats of every waveform, computed once: a real clip serves several reference rows)."""
    jobs = [(kind, name, wav) for kind, named in wavs.items() for name, wav in named.items()]
    out = {kind: {} for kind in wavs}
    for kind, name, wav in tqdm(jobs, desc="onsets", unit="wav", disable=not progress or not jobs):
        out[kind][name] = audio_rhythm(wav, sr, fps)
    return out
