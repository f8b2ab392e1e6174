"""Command-line flags generated from the configuration dataclasses (UNetConfig, DiffusionConfig,
SamplingConfig, TrainConfig), so each setting is declared once: the field (type, help, choices)
lives beside the code that uses it, and the stage script's UPPERCASE constant of the same name
(BASE_DIM for base_dim) is the flag's default.

    add_config_flags(parser, SamplingConfig, constants_for(SamplingConfig, globals()))
    settings = config_from_args(SamplingConfig, args)
"""
import argparse
from dataclasses import fields, replace

from models.diffusion import SamplingConfig


def parse_int_tuple(text):
    """'1,2,4' or '(1, 2, 4)' -> (1, 2, 4)."""
    try:
        values = tuple(int(x) for x in str(text).replace(" ", "").strip("()[]").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1,2,4")
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one integer")
    return values


def flag_fields(cls):
    """The fields of a config dataclass that have a command-line flag."""
    return [f for f in fields(cls) if f.metadata.get("flag", True)]


def constants_for(cls, namespace):
    """{field: value} of the UPPERCASE constants in `namespace` (a script's globals()) named like
    the fields of `cls`: the defaults a user edits at the top of a script."""
    return {f.name: namespace[f.name.upper()] for f in flag_fields(cls) if f.name.upper() in namespace}


def _flag_type(f):
    if isinstance(f.default, tuple):
        return parse_int_tuple
    return type(f.default)


def _shown(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def add_config_flags(parser, cls, defaults=None, unset=False, title=None):
    """One --flag per field of `cls` (type, choices and help from the field). The default is
    `defaults[name]` (a script constant), else the field's own default. unset=True leaves every flag
    at None so the caller can tell which were given (train.py --resume); the help still shows the
    default."""
    defaults = defaults or {}
    group = parser.add_argument_group(title or f"{cls.__name__} ({cls.__module__})")
    for f in flag_fields(cls):
        default = defaults.get(f.name, f.default)
        # "%(default).0s" prints nothing but keeps ArgumentDefaultsHelpFormatter from adding
        # "(default: None)" to the flags left unset
        kwargs = dict(help=f"{f.metadata.get('help', '')} (default {_shown(default)})%(default).0s",
                      default=None if unset else default)
        if "choices" in f.metadata:
            kwargs["choices"] = tuple(f.metadata["choices"])
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _flag_type(f)
        kwargs.update(f.metadata.get("flag_kwargs", {}))  # e.g. nargs="?", const="on"
        group.add_argument(f"--{f.name}", **kwargs)
    return group


def config_from_args(cls, args, base=None, **overrides):
    """An instance of `cls` from the parsed flags: fields whose flag is None (not given with
    unset=True) come from `base` (an instance, e.g. a checkpoint's), else from the defaults."""
    values = {}
    for f in flag_fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    values.update(overrides)
    if base is not None:
        return replace(base, **values)
    return cls(**values)


def add_sampling_flags(parser, namespace):
    """The sampling flags (generated from SamplingConfig, defaults from a script's UPPERCASE
    constants in `namespace`) and the model-loading ones; sample.py and val.py share them."""
    add_config_flags(parser, SamplingConfig, constants_for(SamplingConfig, namespace), title="sampling")
    parser.add_argument("--no_ema", action="store_true", help="use the raw weights, not the EMA ones")
    parser.add_argument("--device", default=namespace.get("DEVICE", "auto"), help="auto, cpu, cuda, cuda:1")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
