"""Video-text models (UMT / VideoMamba multi-modal): a registry video encoder and a BERT-class
text encoder with cross-attention fusion layers, trained with VTC, VTM, MLM and UTA.

Owns the model (:mod:`.model`, :mod:`.text`), its losses, caption datasets (:mod:`.data`),
retrieval metrics with VTM re-ranking (:mod:`.retrieval`), the persistent search index
(:mod:`.index`) and tiny local BERT builders (:mod:`.tiny`); the commands are in
:mod:`videomap.tasks.vl`.

::

    from videomap.vl import VideoTextConfig, VideoTextModel

    model = VideoTextModel.from_config(VideoTextConfig(text_encoder="path/to/bert-base-uncased",
                                                       video_encoder="videomamba_middle",
                                                       video_checkpoint="encoder.safetensors"))
    losses = model(videos, input_ids, attention_mask)          # {"loss", "vtc", "vtm", "mlm", "uta"}
    _, v = model.encode_video(videos)                           # (B, 512), L2-normalised (per frame
                                                                # (B, T, 512) with keep_temporal)
    _, t = model.encode_text(input_ids, attention_mask)

The model classes are imported on first use, so ``import videomap.vl`` stays cheap.
"""

from typing import TYPE_CHECKING

__all__ = [
    "RetrievalSet", "TextSide", "VideoCaptionDataset", "VideoIndex", "VideoTextConfig", "VideoTextModel",
    "build_tiny_bert", "build_wordpiece_vocab", "collate_captions", "evaluate_retrieval", "rerank_with_vtm",
    "retrieval_metrics", "vtc_loss",
]

_LAZY = {
    "VideoTextConfig": "model", "VideoTextModel": "model", "TextSide": "text", "vtc_loss": "losses",
    "build_tiny_bert": "tiny", "build_wordpiece_vocab": "tiny",
    "VideoCaptionDataset": "data", "collate_captions": "data", "RetrievalSet": "data",
    "evaluate_retrieval": "retrieval", "rerank_with_vtm": "retrieval", "retrieval_metrics": "retrieval",
    "VideoIndex": "index",
}

if TYPE_CHECKING:
    from .data import RetrievalSet, VideoCaptionDataset, collate_captions
    from .index import VideoIndex
    from .losses import vtc_loss
    from .model import VideoTextConfig, VideoTextModel
    from .retrieval import evaluate_retrieval, rerank_with_vtm, retrieval_metrics
    from .text import TextSide
    from .tiny import build_tiny_bert, build_wordpiece_vocab


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'videomap.vl' has no attribute {name!r}")
