"""The optimizer's parameter groups are decided by the models, and pinned.

``data/param_groups_v0.json`` holds, for every parameter, (weight decay, lr scale) as the engine
computed them when it still hard-coded VideoMamba tensor names, with one layer per block (today's
``layer_decay_mode="per_block"``). The policy now lives in the models (``no_weight_decay()``,
``_no_weight_decay`` flags, ``lr_layer_id``); these tests prove the effective groups did not move.
The ``released`` mode (the authors' released VideoMamba grouping, now the default) is checked
against its rule, written out here, rather than against a pinned file.
"""

from __future__ import annotations

import json
import os

import pytest

from videomap.engine import param_groups
from videomap.finetune.distill import FeatureDistiller
from videomap.models.registry import MODEL_DEFS
from videomap.pretrain import MaskedPretrainer, PixelTeacher

PINNED = os.path.join(os.path.dirname(__file__), "data", "param_groups_v0.json")


def _rows(model, layer_decay, mode="per_block"):
    out = {}
    for g in param_groups(model, 0.05, layer_decay, layer_decay_mode=mode):
        for n in g["param_names"]:
            out[n] = [g["weight_decay"], round(g["lr_scale"], 12)]
    return out


def _backbone(name, **kw):
    cls, arch = MODEL_DEFS[name]
    return cls(**{**arch, "img_size": 32, "num_frames": 4, **kw})


@pytest.fixture(scope="module")
def pinned():
    with open(PINNED) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["videomap_tiny", "videomamba_tiny"])
@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_backbone_groups_are_unchanged(pinned, name, layer_decay):
    got = _rows(_backbone(name, num_classes=10), layer_decay)
    assert got == pinned[f"{name}/layer_decay={layer_decay}"]


@pytest.mark.parametrize("objective", ["frame", "video"])
def test_pretrainer_groups_are_unchanged(pinned, objective):
    pre = MaskedPretrainer(_backbone("videomap_tiny", num_classes=0), PixelTeacher(16), objective=objective,
                           decoder_dim=64)
    assert _rows(pre, None) == pinned[f"videomap_tiny+{objective}_pretrainer/layer_decay=None"]


def test_wrappers_answer_for_their_backbone():
    """Layer decay through a wrapper gives the backbone's tensors the backbone's own scales; the
    wrapper's extra modules train at the full rate."""
    enc = _backbone("videomap_tiny", num_classes=0)
    alone = _rows(enc, 0.75)
    pre = _rows(MaskedPretrainer(enc, PixelTeacher(16), objective="frame", decoder_dim=64), 0.75)
    assert {n[len("encoder."):]: v for n, v in pre.items() if n.startswith("encoder.")} == alone
    assert all(v[1] == 1.0 for n, v in pre.items() if n.startswith("decoder."))
    assert pre["decoder.mask_token"][0] == 0.0 and pre["decoder.embed.weight"][0] == 0.05

    student = _backbone("videomap_tiny", num_classes=3)
    teacher = _backbone("videomamba_tiny", num_classes=0, embed_dim=96, depth=2)
    dist = _rows(FeatureDistiller(student, teacher), 0.75)
    assert {n[len("student."):]: v for n, v in dist.items() if n.startswith("student.")} == _rows(student, 0.75)
    assert dist["proj.linear.weight"] == [0.05, 1.0] and dist["proj.norm.weight"] == [0.0, 1.0]
    assert _rows(FeatureDistiller(student, teacher, target="cls"), 0.75)["proj.weight"] == [0.05, 1.0]


def _released_rule(name: str, num_blocks: int, decay: float, blocks_decay: list[str] | None = None) -> float:
    """The lr scale of ``get_num_layer_for_vit`` in VideoMamba's released optim_factory.py: the
    scale table is ``decay ** (num_blocks + 1 - i)`` for i in 0..num_blocks+1; ``cls_token``,
    ``pos_embed`` and ``patch_embed.*`` get i = 0, ``blocks.N.*`` (ViT only) i = N + 1, everything
    else the last entry (the ``layers.*`` branch is commented out)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return decay ** (num_blocks + 1)
    for i, prefix in enumerate(blocks_decay or []):
        if name.startswith(prefix + "."):
            return decay ** (num_blocks - i)
    return 1.0


@pytest.mark.parametrize("name", ["videomap_tiny", "videomamba_tiny", "vit_tiny"])
def test_released_mode_follows_the_released_rule(name):
    model = _backbone(name, num_classes=10)
    n = len(model.block_names())
    per_block_decay = model.block_names() if name.startswith("vit") else None
    got = _rows(model, 0.8, mode="released")
    assert set(got) == {k for k, p in model.named_parameters() if p.requires_grad}
    for k, (_, scale) in got.items():
        assert scale == pytest.approx(_released_rule(k, n, 0.8, per_block_decay), rel=1e-9), k
    # the three embedding tensors are the only ones below the full rate for the Mamba models
    low = {k for k, (_, s) in got.items() if s < 1.0}
    if per_block_decay is None:
        assert low == {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
        assert got["temporal_pos_embedding"][1] == 1.0 and got["layers.0.mixer.in_proj.weight"][1] == 1.0
        assert got["norm_f.weight"][1] == 1.0 and got["head.weight"][1] == 1.0
    else:
        assert got["blocks.0.attn.qkv.weight"][1] == pytest.approx(0.8 ** n)
    assert got["pos_embed"][1] == pytest.approx(0.8 ** (n + 1))
    # weight decay does not depend on the mode
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in _rows(model, 0.8).items()}


def test_released_mode_through_the_wrappers():
    enc = _backbone("videomap_tiny", num_classes=0)
    alone = _rows(enc, 0.75, mode="released")
    pre = _rows(MaskedPretrainer(enc, PixelTeacher(16), objective="frame", decoder_dim=64), 0.75, mode="released")
    assert {n[len("encoder."):]: v for n, v in pre.items() if n.startswith("encoder.")} == alone
    assert all(v[1] == 1.0 for n, v in pre.items() if not n.startswith("encoder."))
    student = _backbone("videomap_tiny", num_classes=3)
    teacher = _backbone("videomamba_tiny", num_classes=0, embed_dim=96, depth=2)
    dist = _rows(FeatureDistiller(student, teacher), 0.75, mode="released")
    assert {n[len("student."):]: v for n, v in dist.items() if n.startswith("student.")} == _rows(
        student, 0.75, mode="released")


def test_engine_names_no_model_tensor():
    import videomap.engine as engine

    src_dir = os.path.dirname(engine.__file__)
    for fname in os.listdir(src_dir):
        if fname.endswith(".py"):
            with open(os.path.join(src_dir, fname)) as f:
                text = f.read()
            for name in ("A_log", "pos_embed", "cls_token", "mask_token"):
                assert name not in text, f"engine/{fname} names the model tensor {name}"


def test_released_optimizer_rule_decays_the_2d_state_space_tensors():
    """decay_flagged (train.decay_ssm_params): the authors' optimizers exempt only 1-D tensors,
    biases and no_weight_decay() names, so A_log / A_b_log decay and D / D_b do not; nothing else
    moves. The default keeps Mamba's exemption of both."""
    model = _backbone("videomamba_tiny", num_classes=10)
    default = _rows(model, None, "released")
    released = {}
    for g in param_groups(model, 0.05, None, layer_decay_mode="released", decay_flagged=True):
        for n in g["param_names"]:
            released[n] = [g["weight_decay"], round(g["lr_scale"], 12)]
    moved = sorted(n for n in default if default[n] != released[n])
    a_logs = sorted(n for n in default if n.endswith(("A_log", "A_b_log")))
    assert a_logs and moved == a_logs
    assert all(default[n][0] == 0.0 and released[n][0] == 0.05 for n in a_logs)
    assert all(released[n][0] == 0.0 for n in default if n.endswith((".D", ".D_b")))


@pytest.mark.parametrize("decay_ssm_params", [False, True])
def test_trainer_applies_decay_ssm_params(tmp_path, decay_ssm_params):
    import torch

    from videomap.engine import TrainConfig, Trainer

    model = _backbone("videomamba_tiny", num_classes=2)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 4, 32, 32), torch.zeros(4, dtype=torch.long))
    cfg = TrainConfig(batch_size=2, weight_decay=0.05, output_dir=str(tmp_path), distributed="none",
                      tensorboard=False, plot=False, decay_ssm_params=decay_ssm_params)
    trainer = Trainer(model, lambda m, b: m(b[0]).sum(), data, cfg)
    decay = {n: g["weight_decay"] for g in trainer.optimizer.param_groups for n in g["param_names"]}
    assert decay["layers.0.mixer.A_log"] == decay["layers.0.mixer.A_b_log"] == (0.05 if decay_ssm_params else 0.0)
    assert decay["layers.0.mixer.D"] == 0.0
