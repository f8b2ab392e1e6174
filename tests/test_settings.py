"""One value per setting: every UPPERCASE constant a stage script offers for a configuration field
equals that field's default (the dataclass default is the recommended value the scripts run), and
train.py offers every field of the configurations it trains with."""
from dataclasses import fields

import pytest

import sample
import train
import val
from lm2a.config import flag_fields
from lm2a.longform import LongformConfig
from lm2a.training import RunConfig, TrainConfig
from models.diffusion import DiffusionConfig, SamplingConfig
from models.unet1d_ultimate import UNetConfig

CASES = [(train, UNetConfig), (train, DiffusionConfig), (train, TrainConfig), (train, RunConfig),
         (sample, SamplingConfig), (val, SamplingConfig), (sample, LongformConfig), (val, LongformConfig)]


def _same(constant, default):
    if isinstance(default, tuple):
        return tuple(constant) == default
    return type(constant) is type(default) and constant == default


@pytest.mark.parametrize("script,cls", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_script_constants_equal_field_defaults(script, cls):
    shared = [f for f in flag_fields(cls) if f.name.upper() in vars(script)]
    assert shared, f"{script.__name__} names none of {cls.__name__}'s fields"
    wrong = [f"{script.__name__}.{f.name.upper()} = {vars(script)[f.name.upper()]!r}, "
             f"{cls.__name__}.{f.name} defaults to {f.default!r}"
             for f in shared if not _same(vars(script)[f.name.upper()], f.default)]
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("cls", [UNetConfig, DiffusionConfig, TrainConfig, RunConfig], ids=lambda c: c.__name__)
def test_train_py_offers_every_setting(cls):
    missing = [f.name.upper() for f in flag_fields(cls) if f.name.upper() not in vars(train)]
    assert not missing, f"train.py lacks constants {missing} for {cls.__name__}"


def test_sample_py_offers_every_sampling_setting():
    assert [f.name for f in flag_fields(SamplingConfig) if f.name.upper() not in vars(sample)] == []


def test_the_check_catches_a_disagreement(monkeypatch):
    """The comparison above is not vacuous: a constant edited away from its field is reported."""
    monkeypatch.setattr(train, "LR", 1e-3)
    with pytest.raises(AssertionError, match=r"train.LR = 0.001, TrainConfig.lr defaults to 0.0005"):
        test_script_constants_equal_field_defaults(train, TrainConfig)


def test_flag_defaults_are_the_constants():
    """The parsed defaults of a script are its constants (so the field, the constant and the flag agree)."""
    args = sample.build_parser().parse_args([])
    for f in fields(SamplingConfig):
        if f.name.upper() in vars(sample):
            assert getattr(args, f.name) == vars(sample)[f.name.upper()], f.name
