"""The projector mapping encoder features into the LM's embedding space.

LLaVA-1.5 replaced LLaVA's single linear layer by a 2-layer MLP with GELU ("mlp2x_gelu"), which
improved every benchmark it reported; it is the default. One projector is shared by images and
videos (Video-LLaVA), so both modalities land in the same region of the embedding space.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["PROJECTORS", "build_projector", "check_projector_name"]

PROJECTORS = ("mlp2x_gelu", "linear")  # the documented choices; any "mlp<N>x_gelu" (N >= 1) is accepted
_MLP = re.compile(r"^mlp([1-9][0-9]*)x_gelu$")


def check_projector_name(name: str) -> int:
    """The number of Linear layers for ``name``; ``ValueError`` naming the choices otherwise."""
    if name == "linear":
        return 1
    m = _MLP.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"projector: expected one of {', '.join(PROJECTORS)} (or mlp<N>x_gelu), got {name!r}")
    return int(m.group(1))


def build_projector(name: str, in_dim: int, out_dim: int) -> nn.Module:
    """``linear``: one Linear; ``mlp<N>x_gelu``: N Linear layers with GELU between them."""
    depth = check_projector_name(name)
    for arg, value in (("in_dim", in_dim), ("out_dim", out_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}: expected a positive integer, got {value!r}")
    if name == "linear":
        return nn.Linear(in_dim, out_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
