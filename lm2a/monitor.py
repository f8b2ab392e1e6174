"""Training-time samples: does the model listen to the dance? (train.py --sample_every)

Every sample event the EMA model generates a fixed set of validation clips (fixed per-clip noise,
SamplingConfig settings) twice: with their conditions and with both conditions dropped. It writes
`save_dir/samples/step_XXXXXXXX/` (one PNG per clip: real | generated | unconditional on one colour
scale, and the wavs), returns the figures for train_log.csv:

    sample_mse               generated vs real mel, mean over the clips (log units^2)
    sample_uncond_mse        the same for the unconditional samples
    sample_onset_f1          onset F1 of generated vs real (50 ms)
    sample_beat_align        beat alignment of the generated audio with the clip's own motion ...
    sample_beat_align_shuffled  ... and with another sampled clip's motion: the first must be higher
    sample_clip_share        share of generated values (normalised) at the x0 clip: saturation
    sample_out_of_range      share of generated values outside the real clips' min..max
    sample_band_level_err    max over mel bands of |mean generated - mean real| (log units)
    sample_band_level_err_train  the same for the training set's mean spectrum (the norm stats'
                             mel_mean): the error of a model that only knows the training songs.
                             On songs it has not seen, sample_band_level_err near this is the floor.
    sample_harmonic_share    music-likeness of the generated mels (lm2a/musicality.py), mean over the
    sample_partials          clips: HPSS harmonic energy share, energy share of spectral peaks held
    sample_chroma_concentration  8 frames or more, pitch-class concentration over 0.5 s
    sample_uncond_harmonic_share, sample_uncond_partials, sample_uncond_chroma_concentration
                             the same for the unconditional samples
    sample_real_harmonic_share, sample_real_partials, sample_real_chroma_concentration
                             the same for the real clips (computed once; the same in every row): the
                             target beside the samples' figures. Noise textures with onset stripes
                             score well below it on all three.

and the images and waveforms for TensorBoard. `warnings(history)` turns the figures of successive
events into sentences (saturated samples, a conditioning gap that stays at or below zero).
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lm2a import metrics as M
from lm2a.audio import peak_limited, write_wav
from lm2a.generate import generate_for_items
from lm2a.musicality import FIGURES as MUSIC_FIGURES, mean_music_figures
from lm2a.plots import mel_figure
from lm2a.vocoder import vocode_mels

MUSIC_SETS = ("", "uncond_", "real_")   # generated, unconditional and real clips: sample_<set><figure>
SAMPLE_FIGURES = ("sample_mse", "sample_uncond_mse", "sample_onset_f1", "sample_beat_align",
                  "sample_beat_align_shuffled", "sample_clip_share", "sample_out_of_range",
                  "sample_band_level_err", "sample_band_level_err_train") + \
    tuple(f"sample_{s}{f}" for s in MUSIC_SETS for f in MUSIC_FIGURES)
SATURATION_SHARE = 0.01   # warn when more than this share of values sits at the clip / outside range
GAP_PATIENCE = 3          # warn when the conditioning gap is <= 0 this many validations in a row


class SampleMonitor:
    """Fixed validation clips sampled during training. `items`: lm2a.generate.load_clips items."""

    def __init__(self, items, settings, out_dir, mel_config, vocoder=None, gl_iters=32):
        """settings: a SamplingConfig with its precision resolved; mel_config: the clips' MelConfig."""
        self.items, self.settings, self.out_dir, self.mel_config = items, settings, Path(out_dir), mel_config
        self.uncond_settings = replace(settings, guidance=0.0)
        self.vocoder, self.gl_iters = vocoder, gl_iters
        self.pairs = M.chance_pairs([it["clip"]["song"] for it in items], seed=0) if len(items) > 1 else None
        self.real_music = mean_music_figures([it["clip"]["mel"] for it in items], mel_config)

    def run(self, diffusion, step):
        """Samples, writes the step folder -> (figures {name: float}, tb {images, audio})."""
        gen = self._mels(generate_for_items(diffusion, None, self.items, self.settings, progress=False))
        unc = self._mels(generate_for_items(diffusion, None, self.items, self.uncond_settings, progress=False))
        figures = self.figures(diffusion, gen, unc)
        folder = self.out_dir / f"step_{int(step):08d}"
        folder.mkdir(parents=True, exist_ok=True)
        images, audio = {}, {}
        wavs = self._vocode([gen[it["name"]] for it in self.items])
        for item, wav in zip(self.items, wavs):
            name, real = item["name"], item["clip"]["mel"]
            png = folder / f"{name}.png"
            images[name] = plot_triplet(png, real, gen[name], unc[name],
                                        f"{name} at step {step}: real | generated | unconditional")
            audio[name] = peak_limited(wav)
            write_wav(folder / f"{name}_gen.wav", wav, self.sr)
        return figures, {"images": images, "audio": audio, "sr": self.sr}

    @property
    def sr(self):
        return self.mel_config.sampling_rate

    @staticmethod
    def _mels(results):
        return {r["name"]: r["mel"] for r in results}

    def _vocode(self, mels):
        return vocode_mels(mels, self.mel_config, model=self.vocoder, n_iter=self.gl_iters)

    def figures(self, diffusion, gen, unc):
        per = {k: [] for k in SAMPLE_FIGURES}
        clip_x0 = self.settings.clip_x0
        real_all = np.stack([it["clip"]["mel"] for it in self.items])       # (N, 80, T)
        gen_all = np.stack([gen[it["name"]] for it in self.items])
        for i, item in enumerate(self.items):
            clip, name = item["clip"], item["name"]
            fps = int(clip["fps"])
            m = M.clip_metrics(clip["mel"], gen[name], self.mel_config, clip["motion"], fps)
            per["sample_mse"].append(m["mse"])
            per["sample_onset_f1"].append(m["onset_f1"])
            per["sample_beat_align"].append(m["beat_align"])
            per["sample_uncond_mse"].append(M.mse(clip["mel"], unc[name]))
            if self.pairs is not None:
                other = self.items[self.pairs[i]]["clip"]["motion"]
                per["sample_beat_align_shuffled"].append(
                    M.beat_alignment(M.motion_beats(other, fps), M.audio_beats(gen[name], self.mel_config)))
        with torch.no_grad():
            normalised = diffusion.normalize_mel(torch.from_numpy(gen_all).to(diffusion.device)).cpu().numpy()
        per["sample_clip_share"] = [float(np.mean(np.abs(normalised) >= clip_x0 - 1e-3))] if clip_x0 else [0.0]
        per["sample_out_of_range"] = [float(np.mean((gen_all < real_all.min()) | (gen_all > real_all.max())))]
        real_level = real_all.mean(axis=(0, 2))  # (80,)
        per["sample_band_level_err"] = [float(np.abs(gen_all.mean(axis=(0, 2)) - real_level).max())]
        train_mean = diffusion.mel_mean.detach().cpu().numpy()
        per["sample_band_level_err_train"] = [float(np.abs(train_mean - real_level).max())]
        per.update(self.music(gen, unc))
        return {k: float(np.mean(v)) for k, v in per.items() if v}

    def music(self, gen, unc):
        """{sample_<set><figure>: [mean]} of the generated and unconditional mels, and the real clips'."""
        means = {"": mean_music_figures([gen[it["name"]] for it in self.items], self.mel_config),
                 "uncond_": mean_music_figures([unc[it["name"]] for it in self.items], self.mel_config),
                 "real_": self.real_music}
        return {f"sample_{s}{f}": [means[s][f]] for s in MUSIC_SETS for f in MUSIC_FIGURES}


def warnings(history):
    """Sentences for the newest validation/sample event. `history`: the train_log rows (dicts of
    floats or None) of the validations so far, oldest first."""
    out = []
    last = history[-1] if history else {}
    share = max(last.get("sample_clip_share") or 0.0, last.get("sample_out_of_range") or 0.0)
    if share > SATURATION_SHARE:
        out.append(f"samples saturate: {100 * share:.1f} % of the generated values sit at the x0 clip or "
                   f"outside the real clips' range (healthy: under {100 * SATURATION_SHARE:.0f} %). "
                   f"The model has not learned the data's scale yet; try more steps or a lower --lr (with "
                   f"--objective eps, try v), and look at samples/.")
    gaps = [r.get("cond_gap") for r in history if r.get("cond_gap") is not None]
    if len(gaps) >= GAP_PATIENCE and all(g <= 0 for g in gaps[-GAP_PATIENCE:]):
        out.append(f"the conditioning gap (val_loss_uncond - val_loss) has been <= 0 for "
                   f"{GAP_PATIENCE} validations in a row (now {gaps[-1]:+.4f}): on the validation songs "
                   f"the conditions do not help the predictions. Compare val_loss_motion_only and "
                   f"val_loss_lyrics_only to see which condition hurts.")
    if last.get("sample_beat_align") is not None and last.get("sample_beat_align_shuffled") is not None \
            and last["sample_beat_align"] <= last["sample_beat_align_shuffled"]:
        out.append(f"the samples' beats align no better with their own motion "
                   f"({last['sample_beat_align']:.3f}) than with another clip's "
                   f"({last['sample_beat_align_shuffled']:.3f}): the model does not follow the dance yet.")
    return out


def plot_triplet(path, real, generated, uncond, title=""):
    """PNG of real | generated | unconditional side by side on one colour scale -> RGB array (H, W, 3)."""
    return mel_figure(path, [("", [real, generated, uncond])], title=title,
                      col_titles=("real", "generated", "unconditional"), panel_size=(4.2, 3.0), return_image=True)
