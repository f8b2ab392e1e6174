"""Which device runs, and in which arithmetic: the one place that probes the hardware.

    device = pick_device("auto")                      # cuda when present, else cpu
    settings = resolve_precision(settings, device)    # sampling: "auto" -> "bf16" or "fp32"
    dtype, scaler = amp_settings("auto", device)      # training: autocast dtype, GradScaler or not
"""
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when present, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags known, so no bf16 assumed
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split())


def native_bf16(device) -> bool:
    """Does `device` compute bf16 natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX)?
    Elsewhere bf16 autocast is emulated and can be slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(settings, device):
    """A SamplingConfig with precision "auto" -> "bf16" where native_bf16(device), else "fp32"; other
    settings unchanged. Generated npz files record the resolved precision. (BENCHMARKS.md: bf16 moves a
    sample by a few hundredths of a log unit, against ~1.9 between two noise seeds, and samples
    1.5-1.9x faster.)"""
    if settings.precision != "auto":
        return settings
    return replace(settings, precision="bf16" if native_bf16(device) else "fp32")


# A CPU trains in bf16 under --amp auto from this UNet width (base_dim) up. Measured speed of bf16 over
# fp32, both with the fused Adan, batch 4 (BENCHMARKS.md "bf16 training on CPU"): 0.64x (slower) at 32
# (make demo's size), 0.89x at 64, 1.07x at 96, 1.20x at 128, 1.55x at 192, 1.83x at 256 (the default
# size); curves inside the fp32 seed spread (RESULTS.md "bf16 against fp32").
AUTO_BF16_MIN_WIDTH = 128


def amp_settings(mode, device, width=None):
    """Training's --amp -> (autocast dtype or None, use a GradScaler). auto: on CUDA bf16 (fp16 with a
    GradScaler without bf16); on a CPU that computes bf16 natively (AMX, AVX512-BF16) bf16 for a UNet
    at least AUTO_BF16_MIN_WIDTH wide (`width`: its base_dim), where it wins; fp32 elsewhere."""
    if mode == "auto":
        if device.type == "cuda":
            mode = "on"
        else:
            wide = width is not None and width >= AUTO_BF16_MIN_WIDTH
            mode = "bf16" if wide and native_bf16(device) else "off"
    if mode == "off":
        return None, False
    if mode == "on":
        mode = "bf16" if device.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs CUDA; on CPU use --amp bf16 (or --amp)")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)
