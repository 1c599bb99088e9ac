"""Shared fixtures; shared helper functions live in :mod:`tests.helpers`."""

from __future__ import annotations

import pytest

from videomap.data import make_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory):
    """``synthetic_videos(num_train, num_val, num_frames=8, size=32, seed=0) -> (train_list, val_list)``.

    Real MP4 files of the six motion classes, written once per distinct request and shared by the
    whole session (decoding them is what the tests exercise; writing them is not).
    """
    made: dict[tuple, tuple[str, str]] = {}

    def make(num_train: int = 12, num_val: int = 6, num_frames: int = 8, size: int = 32, seed: int = 0):
        key = (num_train, num_val, num_frames, size, seed)
        if key not in made:
            d = tmp_path_factory.mktemp("videos")
            made[key] = make_synthetic_dataset(d, num_train=num_train, num_val=num_val, num_frames=num_frames,
                                               size=size, seed=seed)
        return made[key]

    return make


@pytest.fixture
def one_thread():
    """Tiny tensors on a small shared machine: intra-op threads only add contention."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
