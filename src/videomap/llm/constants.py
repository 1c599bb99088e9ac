"""Token ids and placeholders shared by the Video-LLM prompt builder, data and model.

Placeholders become a single negative id in ``input_ids`` (LLaVA's convention): it can never
collide with a vocabulary entry, needs no new embedding row, and the model expands each one into
the visual tokens of its image or video just before the LM's embedding lookup.
"""

from ..constants import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "IMAGE_PLACEHOLDER", "IMAGE_TOKEN_INDEX", "PLACEHOLDER_IDS", "VIDEO_PLACEHOLDER",
           "VIDEO_TOKEN_INDEX"]

IMAGE_TOKEN_INDEX = -200
VIDEO_TOKEN_INDEX = -201
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
PLACEHOLDER_IDS = {IMAGE_PLACEHOLDER: IMAGE_TOKEN_INDEX, VIDEO_PLACEHOLDER: VIDEO_TOKEN_INDEX}
