"""What a forward pass keeps alive for backward, counted exactly rather than inferred from a peak.

A peak resident set mixes saved activations with temporaries and allocator slack; the bytes that
autograd saves are what decides how training memory grows with depth and sequence length, so
they are counted here through ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    A storage saved several times (a tensor and its views, or by several operations) counts once;
    storages of ``exclude`` (pass the model's parameters: they exist anyway) do not count. The
    result of ``fn`` is dropped, so nothing stays alive after the call.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # held until the end, so that no freed address is reused and missed

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip and t.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
            alive.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
