"""Checkpoint interoperability: official layouts, prefixes, inflation, interpolation, round trips."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import videomap
from tests.helpers import official_videomamba_state_dict, tiny_model
from videomap.models import create_model, load_pretrained


@pytest.fixture(scope="module")
def official_tiny():
    return official_videomamba_state_dict(192, 24, 8, 224, 400)


def test_official_tiny_8f_loads_into_16f_112px_and_runs(tmp_path, official_tiny):
    path = tmp_path / "videomamba_t16_k400_f8_res224.pth"
    torch.save({"model": official_tiny}, path)
    model = create_model("videomamba_tiny", num_classes=400, num_frames=16, img_size=112)
    missing, unexpected = load_pretrained(model, path, strict=True)
    assert missing == [] and unexpected == []
    assert model.temporal_pos_embedding.shape == (1, 16, 192) and model.pos_embed.shape == (1, 1 + 49, 192)
    # the mixer weights arrive untouched; the tables are resampled, not cropped
    assert torch.equal(model.layers[3].mixer.x_proj_b.weight, official_tiny["layers.3.mixer.x_proj_b.weight"])
    assert torch.equal(model.pos_embed[:, 0], official_tiny["pos_embed"][:, 0])
    old_t = official_tiny["temporal_pos_embedding"]
    assert torch.allclose(model.temporal_pos_embedding.mean(1), old_t.mean(1), atol=0.1)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 16, 112, 112))
    assert out.shape == (1, 400) and torch.isfinite(out).all()


@pytest.mark.parametrize("prefix", ["module.", "model.", "backbone.", "encoder.", "module.backbone."])
def test_prefixes_are_stripped(tmp_path, official_tiny, prefix):
    path = tmp_path / "w.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in official_tiny.items()}, str(path))
    model = create_model("videomamba_tiny", num_classes=400)
    assert load_pretrained(model, path, strict=True) == ([], [])


def test_image_checkpoint_is_inflated_into_the_video_model(tmp_path, official_tiny):
    image = {k: v for k, v in official_tiny.items() if k != "temporal_pos_embedding"}
    image["patch_embed.proj.weight"] = torch.randn(192, 3, 16, 16)  # 2-D patch kernel
    image["head.weight"], image["head.bias"] = torch.randn(1000, 192), torch.randn(1000)  # ImageNet head
    path = tmp_path / "img.pth"
    torch.save(image, path)
    model = create_model("videomamba_tiny", num_classes=10, num_frames=8, tubelet_size=2)
    missing, unexpected = load_pretrained(model, path, strict=True)
    assert sorted(missing) == ["head.bias", "head.weight", "temporal_pos_embedding"] and unexpected == []
    w = model.patch_embed.proj.weight
    assert w.shape == (192, 3, 2, 16, 16)
    assert torch.equal(w[:, :, 1], image["patch_embed.proj.weight"]) and w[:, :, 0].abs().sum() == 0
    assert model.temporal_pos_embedding.abs().sum() == 0  # left as initialised (zeros)


def test_strict_mismatch_names_keys_and_shapes(tmp_path, official_tiny):
    bad = dict(official_tiny)
    bad["layers.0.mixer.in_proj.weight"] = torch.randn(100, 192)
    bad["extra.weight"] = torch.randn(3)
    del bad["layers.1.norm.weight"]
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    model = create_model("videomamba_tiny", num_classes=400)
    with pytest.raises(ValueError) as e:
        load_pretrained(model, path, strict=True)
    msg = str(e.value)
    assert "bad.pth" in msg and "layers.0.mixer.in_proj.weight (100, 192) vs model (768, 192)" in msg
    assert "missing: layers.1.norm.weight" in msg and "unexpected: extra.weight" in msg
    with pytest.raises(ValueError, match="1 shape mismatch: layers.0.mixer.in_proj.weight"):
        load_pretrained(model, path, strict=False)  # non-strict tolerates missing keys, never another shape
    missing, unexpected = load_pretrained(model, path, partial=True)  # a partial load takes the rest
    assert "layers.1.norm.weight" in missing and unexpected == ["extra.weight"]
    assert torch.equal(model.layers[2].norm.weight, official_tiny["layers.2.norm.weight"])


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "evil": Evil()}, path)
    with pytest.raises(ValueError, match="evil.pth: not a loadable weights-only"):
        load_pretrained(create_model("videomamba_tiny", num_classes=2, img_size=32, depth=1), path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_pretrained(create_model("videomamba_tiny", num_classes=2, img_size=32, depth=1), tmp_path / "nope.pt")


def test_full_pretraining_checkpoint_drops_the_decoder(tmp_path):
    from videomap.pretrain import MaskedPretrainer, PixelTeacher

    enc = tiny_model("videomap_tiny", num_classes=0)
    pt = MaskedPretrainer(enc, PixelTeacher(16), decoder_dim=16, decoder_depth=1, mask_type="random")
    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in pt.state_dict().items()}, str(path))  # what the engine writes
    clf = tiny_model("videomap_tiny", num_classes=5)
    missing, unexpected = load_pretrained(clf, path, strict=True)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []


@pytest.mark.parametrize("name", ["videomamba_tiny", "videomap_tiny", "vit_tiny"])
def test_save_pretrained_round_trip_is_exact(tmp_path, name):
    torch.manual_seed(0)
    kw = dict(num_classes=7, img_size=32, num_frames=4, depth=4 if "videomap" in name else 2)
    model = create_model(name, **kw, **({"attn_every": 2} if "videomap" in name else {})).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = videomap.from_pretrained(str(tmp_path / "m")).eval()
    assert type(again) is type(model)
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(model(x), again(x))
    with pytest.raises(FileNotFoundError, match="config.json"):
        videomap.from_pretrained(str(tmp_path))


SMALL = dict(num_classes=3, img_size=32, num_frames=4, depth=4, attn_every=2)


def test_another_architecture_is_a_short_error_unless_partial(tmp_path, caplog):
    torch.manual_seed(0)
    create_model("videomap_tiny", embed_dim=32, **SMALL).save_pretrained(tmp_path / "m")
    wide = create_model("videomap_tiny", embed_dim=48, **SMALL)
    with pytest.raises(ValueError, match=r"\d+ shape mismatches: cls_token \(1, 1, 32\) vs model \(1, 1, 48\)") as e:
        load_pretrained(wide, tmp_path / "m")
    assert len(str(e.value)) < 600 and "and 95 more" in str(e.value) and "partial=True" in str(e.value)
    with pytest.raises(ValueError, match="shape mismatches"):  # create_model no longer skips them quietly
        create_model("videomap_tiny", embed_dim=48, pretrained=str(tmp_path / "m"), **SMALL)
    with caplog.at_level("WARNING"):
        missing, _ = load_pretrained(wide, tmp_path / "m", partial=True)
    assert len(missing) >= 95 and all(len(r.getMessage()) < 600 for r in caplog.records)
    # a partial load keeps every tensor that fits
    src = load_file(str(tmp_path / "m" / "model.safetensors"))
    other = create_model("videomap_tiny", embed_dim=32, d_state=8, pretrained=str(tmp_path / "m"),
                         partial_load=True, **SMALL)
    own = other.state_dict()
    assert own["layers.0.mixer.A_log"].shape == (64, 8) and "layers.0.mixer.A_log" in src
    fitted = [k for k in src if k in own and own[k].shape == src[k].shape]
    assert len(fitted) > 50 and all(torch.equal(own[k], src[k]) for k in fitted)


def test_classifier_head_is_optional_unless_required(tmp_path):
    torch.manual_seed(0)
    create_model("videomap_tiny", embed_dim=32, **SMALL).save_pretrained(tmp_path / "clf")
    headless = create_model("videomap_tiny", embed_dim=32, **{**SMALL, "num_classes": 0})
    assert load_pretrained(headless, tmp_path / "clf") == ([], [])  # a classifier is ignored by an encoder
    headless.save_pretrained(tmp_path / "enc")
    clf = create_model("videomap_tiny", embed_dim=32, **SMALL)
    assert sorted(load_pretrained(clf, tmp_path / "enc")[0]) == ["head.bias", "head.weight"]
    with pytest.raises(ValueError, match="2 classifier tensors missing: head.weight, head.bias -- it has no trained"):
        load_pretrained(clf, tmp_path / "enc", require_head=True)
    five = create_model("videomap_tiny", embed_dim=32, **{**SMALL, "num_classes": 5})
    with pytest.raises(ValueError, match=r"head.weight \(3, 32\) vs model \(5, 32\)"):
        load_pretrained(five, tmp_path / "clf", require_head=True)
