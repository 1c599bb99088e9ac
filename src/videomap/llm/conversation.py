"""Turning LLaVA-style conversations into token ids and loss labels.

A conversation is the list LLaVA / Video-ChatGPT data carry::

    [{"from": "human", "value": "<video>\\nWhat happens?"}, {"from": "gpt", "value": "A bar moves left."}, ...]

("user"/"assistant" are accepted for "human"/"gpt", and ``role``/``content`` keys for
``from``/``value``). :func:`tokenize_conversation` gives ``(input_ids, labels)`` for training and
:func:`build_prompt` the ids of a question plus the generation prompt for inference.

Prompt format
    The tokenizer's own chat template (roles ``user`` / ``assistant``, plus ``system`` when a
    system prompt is given), because an instruction-tuned LM answers best in the format it was
    tuned with. A tokenizer without a template gets :data:`VICUNA_V1_TEMPLATE`, the Vicuna v1
    format LLaVA-1.5 and Video-LLaVA use (``"<s>SYSTEM USER: q ASSISTANT: a</s>USER: ..."``),
    with :data:`VICUNA_V1_SYSTEM` as the default system prompt.

Placeholders
    ``<video>`` / ``<image>`` become one id each (``VIDEO_TOKEN_INDEX`` / ``IMAGE_TOKEN_INDEX``,
    both negative), which the model replaces by the visual tokens of that video or image. The text
    between placeholders is tokenized normally, one piece at a time (LLaVA's convention), so a
    placeholder can never be split into word pieces or merged with its neighbours.

Labels
    ``IGNORE_INDEX`` everywhere except the tokens of each assistant answer and the token that
    closes it, so the loss teaches the model to answer and to stop. The answer spans are found by
    rendering the conversation prefix by prefix: the text of the first ``i`` messages plus the
    generation prompt ends where answer ``i`` starts, the text of ``i + 1`` messages ends where its
    turn ends. Character spans are mapped to tokens through the tokenizer's offsets (fast
    tokenizers) or by tokenizing text prefixes (slow ones); a token that straddles a boundary,
    or a template whose renderings of a prefix are not a prefix of the whole (e.g. templates
    that rewrite earlier turns), raises a ``ValueError`` rather than silently mislabel.
    The closing token is the first special token (eos, ``<|im_end|>``, ``<|eot_id|>``, ...) after
    the answer inside its turn; when the template closes turns with plain text only (a newline,
    say), the tokenizer's eos is inserted right after the answer and labelled, because a model
    that never sees an end-of-answer token never learns to stop.

Truncation (``max_length``)
    Counts text tokens and one per placeholder (the model adds its K visual tokens per
    placeholder on top, so pass the LM context minus those). An over-long conversation is cut at
    the last turn end that fits; if none fits, inside the answer; never before the last
    placeholder (the media would lose its slot) and never so short that no answer token remains:
    that case raises :class:`ConversationTooLongError` (the dataset then drops the sample like an
    unreadable one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, PLACEHOLDER_IDS, VIDEO_PLACEHOLDER

__all__ = [
    "ConversationTooLongError",
    "MODALITY_PLACEHOLDERS",
    "ROLE_NAMES",
    "VICUNA_V1_SYSTEM",
    "VICUNA_V1_TEMPLATE",
    "build_prompt",
    "normalize_conversation",
    "resolve_pad_token_id",
    "tokenize_conversation",
]

# LLaVA / Video-ChatGPT speaker names (and the chat-template ones) -> chat-template roles
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
MODALITY_PLACEHOLDERS = {"video": VIDEO_PLACEHOLDER, "image": IMAGE_PLACEHOLDER}

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# Vicuna v1 (LLaVA's "vicuna_v1" conversation): "<s>SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:"
VICUNA_V1_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set rest = messages[1:] %}"
    "{% else %}{{ default_system }}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}"
    "{% if m['role'] == 'user' %}{{ ' USER: ' + m['content'] }}"
    "{% else %}{{ ' ASSISTANT: ' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)

_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDER_IDS))


class ConversationTooLongError(ValueError):
    """The prompt up to the last placeholder plus one answer token does not fit in ``max_length``.

    ``reason`` is the message without the sample's name (for bad-sample tables)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


# ---------------------------------------------------------------------------------------------
# conversation checks
# ---------------------------------------------------------------------------------------------
def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def normalize_conversation(conversations: Sequence[Mapping[str, Any]], source: str | None = None) -> list[dict]:
    """Chat-template messages ``[{"role", "content"}, ...]`` from a LLaVA conversation.

    Checks what training needs and raises ``ValueError`` (prefixed with ``source``, e.g. the file
    and entry) otherwise: a non-empty list of turns, each with a known speaker and a string text,
    starting with the user, alternating user/assistant, with at least one answer, and no
    placeholder inside an answer.
    """
    where = _where(source)
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence) or not conversations:
        raise ValueError(f"{where}expected a non-empty list of turns, got {conversations!r:.80}")
    messages = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            raise ValueError(f"{where}turn {k}: expected a dict with 'from' and 'value', got {turn!r:.80}")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLE_NAMES:
            raise ValueError(
                f"{where}turn {k}: unknown role {speaker!r}; expected one of {sorted(ROLE_NAMES)} "
                "(a system prompt is passed separately, not as a turn)"
            )
        if not isinstance(text, str):
            raise ValueError(f"{where}turn {k} ({speaker}): expected a string 'value', got {type(text).__name__}")
        role = ROLE_NAMES[speaker]
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"{where}turn {k}: expected a {expected} turn ('human' and 'gpt' must alternate, "
                f"starting with 'human'), got {speaker!r}"
            )
        if role == "assistant" and _PLACEHOLDER_RE.search(text):
            raise ValueError(f"{where}turn {k}: an answer must not contain a placeholder ({text!r:.80})")
        messages.append({"role": role, "content": text})
    if len(messages) < 2:
        raise ValueError(f"{where}the conversation has no answer ('gpt' turn) to learn from")
    return messages


def resolve_pad_token_id(tokenizer: Any) -> int:
    """The id to right-pad batches with: the pad token, else eos (many LMs ship without a pad token;
    padding is masked out of attention and loss, so any valid id works)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


# ---------------------------------------------------------------------------------------------
# rendering and tokenization
# ---------------------------------------------------------------------------------------------
def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    else:
        if getattr(tokenizer, "eos_token", None) is None:
            raise ValueError(
                "the tokenizer has neither a chat template nor an eos token, so the Vicuna fallback "
                "prompt cannot mark the end of an answer; set tokenizer.chat_template or an eos token"
            )
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            chat_template=VICUNA_V1_TEMPLATE, default_system=VICUNA_V1_SYSTEM,
            bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token,
        )
    if not isinstance(text, str):  # some versions return a list for a single conversation
        text = text[0]
    return text


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system is None:
        return messages
    if _PLACEHOLDER_RE.search(system):
        raise ValueError(f"the system prompt must not contain a placeholder: {system!r:.80}")
    return [{"role": "system", "content": system}, *messages]


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, tok in decoder.items() if getattr(tok, "special", False))
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    for name in ("pad_token_id", "unk_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and value != eos:
            ids.discard(value)  # never the end of an answer
    return ids


def _piece_boundaries(tokenizer: Any, text: str, ids: list[int], offsets: list[tuple[int, int]] | None,
                      positions: list[int]) -> list[int]:
    """For each character position in ``text`` (ascending), the number of tokens of ``ids`` before it.

    A token that straddles a position is assigned to the side that is not just whitespace (so a
    word's leading space may sit on either side); anything else is a real misalignment.
    """
    out = []
    k = 0  # positions ascend, so the scan over tokens resumes where the previous one stopped
    for pos in positions:
        if pos <= 0 or pos >= len(text):
            out.append(0 if pos <= 0 else len(ids))
            continue
        if offsets is not None:
            while k < len(offsets) and offsets[k][1] <= pos:
                k += 1
            count = k
            if k < len(offsets) and offsets[k][0] < pos:  # token k straddles the position
                s, e = offsets[k]
                if not text[pos:e].strip():
                    count = k + 1
                elif text[s:pos].strip():
                    raise ValueError(
                        f"token {tokenizer.convert_ids_to_tokens(ids[k])!r} spans the boundary at "
                        f"{text[max(0, pos - 20):pos]!r} | {text[pos:pos + 20]!r}, so the answer cannot be "
                        "labelled token-exactly with this tokenizer and template"
                    )
            out.append(count)
            continue
        # slow tokenizer: the tokens of the prefix must be a prefix of the tokens of the piece
        for cut in dict.fromkeys((pos, len(text[:pos].rstrip()))):
            prefix = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
            if ids[: len(prefix)] == prefix:
                out.append(len(prefix))
                break
        else:
            raise ValueError(
                f"tokenizing the text before {text[pos:pos + 20]!r} does not give a prefix of the whole "
                "tokenization, so the answer cannot be labelled token-exactly with this tokenizer and template"
            )
    return out


def _tokenize(tokenizer: Any, text: str, positions: Sequence[int]) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` with each placeholder as its single id, and the token index of each
    character position in ``positions`` (positions never fall inside a placeholder)."""
    ids: list[int] = []
    boundary = [0] * len(positions)
    pieces = []  # (start, end, placeholder id or None)
    cursor = 0
    for match in _PLACEHOLDER_RE.finditer(text):
        pieces.append((cursor, match.start(), None))
        pieces.append((match.start(), match.end(), PLACEHOLDER_IDS[match.group()]))
        cursor = match.end()
    pieces.append((cursor, len(text), None))
    fast = bool(getattr(tokenizer, "is_fast", False))
    for start, end, placeholder in pieces:
        if placeholder is not None:
            for j, pos in enumerate(positions):
                if start < pos < end:
                    raise ValueError(f"a turn boundary falls inside the placeholder at character {start}")
                if pos >= end:
                    boundary[j] = len(ids) + 1
            ids.append(placeholder)
            continue
        if start == end:
            continue
        piece = text[start:end]
        if fast:
            enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            piece_ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        else:
            piece_ids, offsets = list(tokenizer(piece, add_special_tokens=False)["input_ids"]), None
        inside = [(j, pos - start) for j, pos in enumerate(positions) if start <= pos <= end]
        if inside:
            counts = _piece_boundaries(tokenizer, piece, piece_ids, offsets, [p for _, p in inside])
            for (j, _), count in zip(inside, counts):
                boundary[j] = len(ids) + count
        for j, pos in enumerate(positions):
            if pos > end:
                boundary[j] = len(ids) + len(piece_ids)
        ids.extend(piece_ids)
    return ids, boundary


def _truncate(ids: list[int], labels: list[int], turn_ends: list[int], max_length: int,
              source: str | None) -> tuple[list[int], list[int]]:
    if len(ids) <= max_length:
        return ids, labels
    last_placeholder = max((k for k, i in enumerate(ids) if i < 0), default=-1)

    def usable(cut: int) -> bool:
        return cut > last_placeholder and any(v != IGNORE_INDEX for v in labels[:cut])

    fitting = [c for c in turn_ends if c <= max_length and usable(c)]
    cut = max(fitting) if fitting else max_length
    if not usable(cut):
        need = max(last_placeholder + 1, next(k for k, v in enumerate(labels) if v != IGNORE_INDEX) + 1)
        reason = (f"conversation too long: needs at least {need} tokens (its prompt up to the last placeholder "
                  f"and one answer token) but max_length={max_length}")
        raise ConversationTooLongError(_where(source) + reason, reason)
    return ids[:cut], labels[:cut]


def tokenize_conversation(tokenizer: Any, conversations: Sequence[Mapping[str, Any]], *, system: str | None = None,
                          max_length: int | None = None, source: str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)``, 1-D LongTensors, for a LLaVA conversation (see the module docstring).

    ``system`` adds a system prompt (the Vicuna fallback uses its default one when ``None``);
    ``source`` names the sample in error messages (e.g. ``"train.json entry 12"``).
    """
    messages = _with_system(normalize_conversation(conversations, source), system)
    offset = 1 if system is not None else 0
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []  # per answer: (start, end of text, end of turn) in characters
    for k in range(offset, len(messages)):
        if messages[k]["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], add_generation_prompt=True)
        after = _render(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not (full.startswith(before) and full.startswith(after) and len(before) <= len(after)):
            raise ValueError(
                f"{_where(source)}the chat template is not prefix-stable: rendering the first {k} message(s) "
                f"(+ generation prompt) or {k + 1} message(s) does not give a prefix of the whole conversation, "
                "so the answer tokens cannot be located; use a tokenizer whose template only appends turns"
            )
        a, b = len(before), len(after)
        if not full[a:b].strip():
            raise ValueError(f"{_where(source)}answer {len(spans)} is empty")
        spans.append((a, a + len(full[a:b].rstrip()), b))
    wanted = sorted({p for span in spans for p in span})
    n_rendered = len(_PLACEHOLDER_RE.findall(full))
    n_given = sum(len(_PLACEHOLDER_RE.findall(m["content"])) for m in messages)
    if n_rendered != n_given:
        raise ValueError(
            f"{_where(source)}the chat template rendered {n_rendered} placeholder(s) for {n_given} in the messages"
        )
    ids, bounds = _tokenize(tokenizer, full, wanted)
    token_at = dict(zip(wanted, bounds))
    special = _special_ids(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)

    labels = [IGNORE_INDEX] * len(ids)
    inserts: list[int] = []  # token positions before which an eos is inserted
    for n, (a, e, b) in enumerate(spans):
        ta, te, tb = token_at[a], token_at[e], token_at[b]
        if te <= ta:
            raise ValueError(f"{_where(source)}answer {n} produced no tokens")
        closing = next((k for k in range(ta, tb) if ids[k] in special), None)
        if closing is not None:
            labels[ta: closing + 1] = ids[ta: closing + 1]
        else:
            if not isinstance(eos, int):
                raise ValueError(
                    "the chat template closes answers without a special token and the tokenizer has no eos "
                    "token to insert, so the model could not learn to stop"
                )
            labels[ta:te] = ids[ta:te]
            inserts.append(te)
    turn_ends = [token_at[b] for _, _, b in spans]
    if inserts:
        new_ids, new_labels = [], []
        for k in range(len(ids) + 1):
            if k in inserts:
                new_ids.append(eos)
                new_labels.append(eos)
            if k < len(ids):
                new_ids.append(ids[k])
                new_labels.append(labels[k])
        turn_ends = [t + sum(1 for p in inserts if p <= t) for t in turn_ends]
        ids, labels = new_ids, new_labels
    if max_length is not None:
        ids, labels = _truncate(ids, labels, turn_ends, int(max_length), source)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def build_prompt(tokenizer: Any, question: str, modality: str | None = None, *, system: str | None = None
                 ) -> torch.Tensor:
    """Input ids (1-D LongTensor) of one user turn plus the generation prompt, for inference.

    ``modality`` "video" / "image" puts that placeholder first (``"<video>\\n" + question``, the
    layout of the training data) unless the question already contains it; ``None`` is text only.
    """
    if modality is not None:
        if modality not in MODALITY_PLACEHOLDERS:
            raise ValueError(f"modality must be 'video', 'image' or None, got {modality!r}")
        placeholder = MODALITY_PLACEHOLDERS[modality]
        if placeholder not in question:
            question = f"{placeholder}\n{question}"
    messages = _with_system([{"role": "user", "content": question}], system)
    text = _render(tokenizer, messages, add_generation_prompt=True)
    ids, _ = _tokenize(tokenizer, text, [])
    return torch.tensor(ids, dtype=torch.long)
