"""`hparam`: a dataclass field for a hyper-parameter, carrying the one-line help of the command-line
flag that the project's config layer generates from it. The configuration dataclasses beside the modules
(UNetConfig, DiffusionConfig, SamplingConfig) declare every setting once with it."""
from dataclasses import field


def hparam(default, help_text, **meta):
    """meta: flag=False keeps the field off the command line; choices=(...) limits its values."""
    return field(default=default, metadata=dict(help=help_text, **meta))
