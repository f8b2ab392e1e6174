"""Code shared by the LM2A stage scripts: mel, motion features, lyric encoder, clip files,
checkpoints and the vocoder. Stage scripts import from here; nothing is copied between them.
The tensor layout (mel bands, motion feature widths) is named once in models/layout.py."""
from pathlib import Path

from models.layout import MOTION_DIM, NUM_MELS, POSE_DIM  # noqa: F401  (re-exported: lm2a's users name them here)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VOCODER_NAME = "bigvgan_v2_22khz_80band_256x"
DEFAULT_VOCODER_DIR = REPO_ROOT / "BigVGAN" / DEFAULT_VOCODER_NAME
DEFAULT_VOCODER_CONFIG = DEFAULT_VOCODER_DIR / "config.json"
SCHEMA_VERSION = 1
