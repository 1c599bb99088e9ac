"""The Hugging Face Hub as a place for weights: ``pretrained="hf-hub:ORG/NAME"`` and ``push_to_hub``.

A Hub repository holds what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``)
or what ``videomap export --format hf`` writes; both load with ``create_model(...,
pretrained="hf-hub:ORG/NAME")`` and ``from_pretrained("hf-hub:ORG/NAME")``. Downloads go through
``huggingface_hub``'s cache, so ``HF_HUB_OFFLINE=1`` / ``HF_HUB_CACHE`` apply as everywhere else.
``huggingface_hub`` is optional: without it these calls raise an ``ImportError`` naming the extra.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
# what a model needs from a repository (no model cards, no other formats)
_ALLOW = ["*.json", "*.safetensors"]

__all__ = ["HUB_PREFIX", "is_hub_id", "push_to_hub", "resolve_hub_path"]


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError("the Hugging Face Hub needs huggingface_hub: pip install 'videomap-torch[hf]'") from e
    return huggingface_hub


def is_hub_id(path: Any) -> bool:
    """True for ``"hf-hub:ORG/NAME"`` (optionally ``@revision``)."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME@rev"`` -> ``("ORG/NAME", "rev")``; a malformed id is a ``ValueError``."""
    repo = spec[len(HUB_PREFIX):] if is_hub_id(spec) else spec
    repo, _, revision = repo.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"pretrained: expected 'hf-hub:ORG/NAME' (optionally '@revision'), got {spec!r}")
    return repo, revision or None


def resolve_hub_path(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local snapshot directory of a Hub model (downloaded into the cache when missing)."""
    repo, revision = parse_hub_id(spec)
    hub = _hub()
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = hub.snapshot_download(repo, revision=revision, allow_patterns=_ALLOW, cache_dir=cache_dir)
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(f"{spec}: not in the local Hugging Face cache and the Hub cannot be reached "
                                f"(HF_HUB_OFFLINE or no network): {e}") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{spec}: no such model repository on the Hub (or it is private: log in)") from e
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"{spec}: the repository has no model.safetensors (expected a save_pretrained or "
                                "`videomap export --format hf` layout)")
    log.info("%s resolved to %s", spec, path)
    return path


def push_to_hub(model: Any, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload videomap model") -> str:
    """Upload ``model.save_pretrained``'s files to ``repo_id`` (created if missing); returns the
    commit URL. Needs a login (``hf auth login``) or ``token``."""
    repo_id, _ = parse_hub_id(repo_id)
    api = _hub().HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="videomap-push-") as tmp:
        model.save_pretrained(tmp)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                   commit_message=commit_message)
    url = str(getattr(commit, "commit_url", commit))
    log.info("pushed %s to %s", type(model).__name__, url)
    return url
