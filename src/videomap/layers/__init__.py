"""Building blocks shared by every backbone (ops -> layers -> models): the BiMamba mixer and the
Mamba block around it, attention and the Transformer block, MLP, RMSNorm, drop path, the 3-D patch
embedding and position-table construction and resizing. No block knows which model it is in."""

from .attention import Attention, TransformerBlock
from .blocks import MambaBlock
from .drop_path import DropPath, drop_path_rates
from .mamba import BiMamba
from .mlp import Mlp
from .norm import RMSNorm
from .patch_embed import PatchEmbed3D
from .pos_embed import resize_spatial_pos_embed, resize_temporal_pos_embed, sinusoid_table

__all__ = [
    "Attention", "BiMamba", "DropPath", "MambaBlock", "Mlp", "PatchEmbed3D", "RMSNorm", "TransformerBlock",
    "drop_path_rates",
    "resize_spatial_pos_embed", "resize_temporal_pos_embed", "sinusoid_table",
]
