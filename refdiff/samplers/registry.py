"""The sampler registry: a name -> sampler function table that GaussianDiffusion and the CLI read.

A sampler registers under a name with @register_sampler("name"), so a new one plugs into
GaussianDiffusion.sample(sampler="name") and `refdiff sample --sampler name` without touching the
model or the diffusion class. The contract every sampler keeps is in refdiff/samplers/__init__.py.
"""
SAMPLERS = {}


def register_sampler(name):
    """Decorator: register a sampler generator function under `name` (replacing any previous one)."""

    def register(fn):
        SAMPLERS[name] = fn
        return fn

    return register


def get_sampler(name):
    """The sampler registered as `name` (a function is returned as is); a clear error lists the known names."""
    if callable(name):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: registered samplers are {sorted(SAMPLERS)}")
    return SAMPLERS[name]
