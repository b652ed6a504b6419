"""Checkpoint folders of the learned models: weights, configuration, model card, resume state.

One folder holds one model::

    model.pt          torch.save({"config": config, "state_dict": EMA weights})
    card.json         the model card, with content_hash = sha256(model.pt bytes)[:16]
    train_state.pt    optimizer, step, RNG states: what a resumed run needs

``model.pt`` holds the configuration next to the weights (architecture, its
arguments, context, default sampling steps, normalisation), so a folder is
all an inference run needs. The content hash covers both, because it hashes
the file; the card names it, so a sCT's model identity changes whenever its
weights or configuration do, and a ``model.pt`` that was altered or only
partly written no longer matches its card and is refused.

Weights may be stored as float16 (``half=True``) to halve the size of the
models bundled with the project; they are loaded back as float32. Diffusion
U-Nets lose nothing measurable at float16 storage (inference still computes
in float32), but a training run should keep float32 weights for resuming.

Every file is written to a temporary name in the folder, flushed, and renamed
into place (``os.replace``), ``card.json`` last, so a crash leaves either the
old checkpoint or a folder whose hash check fails; never a half-file read as
a model. Files are loaded with ``torch.load(weights_only=True)``: no pickled
code runs when a checkpoint from elsewhere is opened.

References
----------
.. [1] Mitchell M. et al., "Model Cards for Model Reporting", FAT* 2019
   (the card's fields).
.. [2] PyTorch documentation, ``torch.load`` (``weights_only``: loading only
   tensors and primitive containers).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from models.errors import ModelError
from models.fileio import fsync_directory, write_atomic

__all__ = [
    "CARD_FIELDS",
    "CARD_FILE",
    "HASH_HEX_DIGITS",
    "MODEL_FILE",
    "TRAIN_STATE_FILE",
    "content_hash",
    "load_checkpoint",
    "load_train_state",
    "save_checkpoint",
]

MODEL_FILE = "model.pt"
CARD_FILE = "card.json"
TRAIN_STATE_FILE = "train_state.pt"
#: Hex digits of the SHA-256 of ``model.pt`` kept as the content hash (64 bits).
HASH_HEX_DIGITS = 16
#: Fields every card must hold (``content_hash`` is added by :func:`save_checkpoint`).
CARD_FIELDS = (
    "name",
    "version",
    "description",
    "intended_use",
    "training_data",
    "created",
    "code_version",
    "evaluation",
    "architecture",
)


def content_hash(data: bytes) -> str:
    """First :data:`HASH_HEX_DIGITS` hex digits of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:HASH_HEX_DIGITS]




def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc}") from exc


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _json_check(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{what} must hold only JSON values (str, int, float, bool, None, list, dict): {exc}") from exc


def _stored_state(model_state: dict, half: bool) -> dict[str, torch.Tensor]:
    stored: dict[str, torch.Tensor] = {}
    for key, value in model_state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"model_state must map names to tensors; found {key!r}: {type(value).__name__}"
            )
        tensor = value.detach().to("cpu").clone()
        if tensor.is_floating_point():
            if half:
                halved = tensor.to(torch.float16)
                if bool((torch.isinf(halved) & torch.isfinite(tensor)).any()):
                    raise ModelError(
                        f"model_state[{key!r}] holds values beyond float16's range (65504); save with half=False"
                    )
                tensor = halved
            else:
                tensor = tensor.to(torch.float32)
        stored[key] = tensor
    return stored


def save_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    card: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    half: bool = False,
) -> str:
    """Write a checkpoint folder (created if missing; existing files are replaced).

    Parameters
    ----------
    folder : pathlib.Path
        The checkpoint folder.
    model_state : dict
        The (EMA) weights: a ``state_dict`` mapping names to tensors.
    config : dict
        JSON values only: architecture, its keyword arguments, context,
        default sampling steps, normalisation.
    card : dict
        JSON values only, holding every field of :data:`CARD_FIELDS`
        (``evaluation`` a dict). Any ``content_hash`` in it is replaced by the
        hash of the new ``model.pt``.
    train_state : dict or None
        Optimizer state, step, RNG states: tensors and primitive containers
        only (what ``torch.load(weights_only=True)`` accepts). None writes no
        ``train_state.pt`` and removes an older one, which would no longer
        match the weights.
    half : bool
        Store floating-point weights as float16 (bundled models); integer
        buffers are kept as they are.

    Returns
    -------
    str
        The content hash written into ``card.json``.

    Raises
    ------
    ModelError
        If an argument is malformed (the message names it), a card field is
        missing, a weight overflows float16 with ``half=True``, or a file
        cannot be written.

    References
    ----------
    Model cards (module reference [1]).
    """
    folder = Path(folder)
    if not isinstance(model_state, dict) or not model_state:
        raise ModelError(f"model_state must be a non-empty dict of tensors; found {type(model_state).__name__}")
    if not isinstance(config, dict):
        raise ModelError(f"config must be a dict; found {type(config).__name__}")
    _json_check(config, "config")
    if not isinstance(card, dict):
        raise ModelError(f"card must be a dict; found {type(card).__name__}")
    missing = [name for name in CARD_FIELDS if name not in card]
    if missing:
        raise ModelError(f"card is missing the field(s) {missing}; a card holds {list(CARD_FIELDS)}")
    if not isinstance(card["evaluation"], dict):
        raise ModelError(f"card['evaluation'] must be a dict of metrics; found {type(card['evaluation']).__name__}")
    _json_check(card, "card")
    if train_state is not None and not isinstance(train_state, dict):
        raise ModelError(f"train_state must be a dict or None; found {type(train_state).__name__}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create checkpoint folder {folder}: {exc}") from exc

    model_bytes = _torch_bytes({"config": config, "state_dict": _stored_state(model_state, half)})
    digest = content_hash(model_bytes)
    card_bytes = (json.dumps({**card, "content_hash": digest}, indent=2, sort_keys=True) + "\n").encode()
    # Resume state first and the card last: a crash in between leaves a folder whose hash check fails.
    if train_state is not None:
        _write_atomic(folder / TRAIN_STATE_FILE, _torch_bytes(train_state))
    elif (folder / TRAIN_STATE_FILE).exists():
        (folder / TRAIN_STATE_FILE).unlink()
    _write_atomic(folder / MODEL_FILE, model_bytes)
    _write_atomic(folder / CARD_FILE, card_bytes)
    fsync_directory(folder)
    return digest


def _torch_load(path: Path, map_location: str | torch.device, data: bytes | None = None) -> Any:
    try:
        source = io.BytesIO(data) if data is not None else path
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on a bad file
        raise ModelError(
            f"{path} is not a readable checkpoint file (corrupt or not written by sct-node): {exc}"
        ) from exc


def load_checkpoint(
    folder: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder written by :func:`save_checkpoint`, checking its content hash.

    Parameters
    ----------
    folder : pathlib.Path
        The checkpoint folder.
    map_location : str or torch.device
        Device the tensors are loaded onto.

    Returns
    -------
    tuple
        ``(config, state_dict, card)``: the configuration dict, the weights
        with every floating-point tensor as float32, and the card dict
        (including ``content_hash``).

    Raises
    ------
    ModelError
        If the folder or a file is missing, a file is corrupt, or the hash of
        ``model.pt`` differs from the card's ``content_hash`` (the file was
        altered or only partly written); the message names the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"checkpoint folder {folder} does not exist or is not a folder")
    model_path, card_path = folder / MODEL_FILE, folder / CARD_FILE
    for path in (model_path, card_path):
        if not path.is_file():
            raise ModelError(f"checkpoint {folder} is missing {path.name}; expected {MODEL_FILE} and {CARD_FILE}")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{card_path} is not a readable JSON model card: {exc}") from exc
    if not isinstance(card, dict) or not isinstance(card.get("content_hash"), str):
        raise ModelError(f"{card_path} holds no content_hash; expected the card written by save_checkpoint")
    try:
        model_bytes = model_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {model_path}: {exc}") from exc
    digest = content_hash(model_bytes)
    if digest != card["content_hash"]:
        raise ModelError(
            f"{model_path} does not match its card: sha256 prefix {digest}, card {card_path.name} says "
            f"{card['content_hash']}; the file was altered or only partly written"
        )
    payload = _torch_load(model_path, map_location, model_bytes)
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("config"), dict)
        or not isinstance(payload.get("state_dict"), dict)
    ):
        raise ModelError(f"{model_path} does not hold {{'config': dict, 'state_dict': dict}}")
    state_dict = {
        key: value.to(torch.float32) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in payload["state_dict"].items()
    }
    return payload["config"], state_dict, card


def load_train_state(folder: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The resume state of a checkpoint folder, or None when it has none.

    Parameters
    ----------
    folder : pathlib.Path
        The checkpoint folder.
    map_location : str or torch.device
        Device the tensors are loaded onto.

    Raises
    ------
    ModelError
        If ``train_state.pt`` exists but is corrupt or not a dict.
    """
    path = Path(folder) / TRAIN_STATE_FILE
    if not path.is_file():
        return None
    state = _torch_load(path, map_location)
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a dict; found {type(state).__name__}")
    return state
