"""Training data for the learned models: SynthRAD-layout cases, 2.5D slices and patches.

A *case* is a folder holding ``mr``, ``mask`` and (for paired training) ``ct``
images as ``.mha`` (SynthRAD2025) or ``.nii.gz`` (SynthRAD2023); ``sct-node
phantom`` writes the same layout (``<output>/<site>-<seed>/{mr,ct,mask}.mha``
next to a ``dicom/`` folder, which is ignored here). :func:`load_cases` reads
a folder of cases (or one case folder), :class:`SliceDataset` normalises each
case once and draws random 2.5D patches from it, and
:func:`validation_slices` picks fixed whole slices for validation metrics.

Sampling is random in three steps: a case (uniformly), a slice of it that
holds body (uniformly), and a patch whose centre is a body pixel with
probability ``body_fraction`` (any pixel otherwise, so the model also learns
that air stays air). Every draw comes from a ``torch.Generator``, so a batch
sequence is reproducible from its seed.

References
----------
.. [1] Thummerer A. et al., "SynthRAD2023 Grand Challenge dataset: generating
   synthetic CT for radiotherapy", Med. Phys. 50:4664-4674, 2023.
.. [2] Thummerer A. et al., "SynthRAD2025 Grand Challenge dataset: generating
   synthetic CTs for radiotherapy from head to abdomen", Med. Phys., 2025.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.body_mask import body_mask_from_mr
from models.errors import GeometryError, ModelError, PhantomError
from models.learned.edges import edge_map, outline
from models.learned.normalisation import BACKGROUND, normalise_ct, normalise_mr
from models.learned.randomisation import AppearancePool, RandomisationConfig
from models.phantoms.synthrad import SYNTHRAD_EXTENSIONS, read_synthrad_case
from models.volume import Volume

__all__ = ["SIZE_MULTIPLE", "Case", "SliceDataset", "context_stack", "load_cases", "validation_slices"]

logger = logging.getLogger(__name__)

#: Whole slices are padded to a multiple of this (the networks halve H and W three times).
SIZE_MULTIPLE = 8

_IMAGE_NAMES = ("mr", "ct", "mask")
#: Optional tissue label map (uint8 :class:`~models.phantoms.tissues.Tissue` values) that ``sct-node phantom``
#: writes: the source of MR appearance randomisation (:mod:`models.learned.randomisation`).
LABELS_NAME = "labels"


@dataclass(frozen=True, eq=False)
class Case:
    """One training or validation case (compared by identity).

    Attributes
    ----------
    case_id : str
        The case folder's name.
    mr : Volume
        MR intensities as stored.
    ct : Volume or None
        CT in HU on the MR's grid, or None when the case has no ``ct`` image.
    body : numpy.ndarray
        Boolean ``(z, y, x)`` body mask on the MR's grid: the case's ``mask``
        image, or :func:`~models.body_mask.body_mask_from_mr` when it has none.
    labels : numpy.ndarray or None
        ``(z, y, x)`` uint8 tissue labels on the MR's grid (``labels`` image of a phantom case), or None.
    """

    case_id: str
    mr: Volume
    ct: Volume | None
    body: np.ndarray
    labels: np.ndarray | None = None


def _expected_names() -> str:
    def names(name: str) -> str:
        return " or ".join(f"{name}{ext}" for ext in SYNTHRAD_EXTENSIONS)

    return f"{names('mr')}, {names('mask')} (computed from the MR if absent) and optionally {names('ct')}"


def _image_path(case_dir: Path, name: str) -> Path | None:
    found = [case_dir / f"{name}{ext}" for ext in SYNTHRAD_EXTENSIONS if (case_dir / f"{name}{ext}").is_file()]
    if len(found) > 1:
        raise ModelError(f"case {case_dir} holds both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def _read_image(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        return Volume.from_sitk(sitk.ReadImage(str(path)))
    except (RuntimeError, GeometryError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def _load_case(case_dir: Path) -> Case:
    paths = {name: _image_path(case_dir, name) for name in _IMAGE_NAMES}
    case_id = case_dir.name
    mr_path = paths["mr"]
    if mr_path is None:
        raise ModelError(f"case {case_id} has no MR image; expected {_expected_names()}")
    ct: Volume | None
    mask: Volume | None
    if all(paths.values()):
        try:
            images = read_synthrad_case(case_dir)
        except GeometryError as exc:
            raise ModelError(f"{exc}; the images of a case must be co-registered on one grid") from exc
        except PhantomError as exc:
            raise ModelError(str(exc)) from exc
        mr, ct, mask = images.mr, images.ct, images.mask
    else:
        ct_path, mask_path = paths["ct"], paths["mask"]
        mr = _read_image(mr_path)
        ct = _read_image(ct_path) if ct_path else None
        mask = _read_image(mask_path) if mask_path else None
        for name, other in (("ct", ct), ("mask", mask)):
            if other is not None and not mr.same_grid(other):
                raise ModelError(
                    f"case {case_id}: {name} grid (shape {other.shape}, spacing {other.spacing_mm}, origin "
                    f"{other.origin_mm}) differs from mr (shape {mr.shape}, spacing {mr.spacing_mm}, "
                    f"origin {mr.origin_mm}); the images of a case must be co-registered on one grid"
                )
    if mask is None:
        logger.info("case %s has no mask image; computing the body mask from the MR", case_id)
        body = body_mask_from_mr(mr)
    else:
        body = np.asarray(mask.array) > 0
    if not body.any():
        raise ModelError(f"case {case_id}: the body mask is empty; expected the patient outline (non-zero inside)")
    labels = None
    labels_path = _image_path(case_dir, LABELS_NAME)
    if labels_path is not None:
        label_volume = _read_image(labels_path)
        if not mr.same_grid(label_volume):
            raise ModelError(f"case {case_id}: labels grid (shape {label_volume.shape}) differs from mr (shape "
                             f"{mr.shape}); the images of a case must be co-registered on one grid")
        labels = np.asarray(label_volume.array).astype(np.uint8)
    return Case(case_id=case_id, mr=mr, ct=ct, body=body, labels=labels)


def load_cases(root: Path) -> list[Case]:
    """Read every case under ``root`` (SynthRAD2023/2025 layout or ``sct-node phantom`` output).

    Parameters
    ----------
    root : pathlib.Path
        A folder whose sub-folders are cases, or one case folder. A case
        folder holds ``mr`` and ``mask`` (and usually ``ct``) as ``.mha`` or
        ``.nii.gz``; sub-folders without an ``mr`` image (such as the
        ``dicom/`` folder ``sct-node phantom`` writes) are skipped.

    Returns
    -------
    list of Case
        Sorted by case id (the folder name).

    Raises
    ------
    ModelError
        If ``root`` is not a folder, holds no case (the message names the
        expected files), an image is unreadable or present in both formats,
        a case's images are not on one grid, or a body mask is empty.

    References
    ----------
    Module references [1], [2].
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"training data folder {root} does not exist or is not a folder")
    if _image_path(root, "mr") is not None:
        case_dirs = [root]
    else:
        case_dirs = sorted(
            (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _image_path(d, "mr")),
            key=lambda d: d.name,
        )
    if not case_dirs:
        raise ModelError(
            f"no cases found in {root}: expected {root} or its sub-folders to hold {_expected_names()} "
            "(SynthRAD2023/2025 layout, as written by 'sct-node phantom')"
        )
    cases = [_load_case(d) for d in case_dirs]
    logger.info("loaded %d case(s) from %s (%d with CT)", len(cases), root, sum(c.ct is not None for c in cases))
    return cases


def context_stack(volume_norm: np.ndarray, k: int, context: int) -> np.ndarray:
    """The ``2 * context + 1`` slices centred on slice ``k``, border slices repeated.

    Parameters
    ----------
    volume_norm : numpy.ndarray
        ``(Z, H, W)`` normalised volume.
    k : int
        Centre slice index, ``0 <= k < Z``.
    context : int
        Neighbouring slices on each side, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        ``(2 * context + 1, H, W)``; channel ``context`` is slice ``k``.

    Raises
    ------
    ModelError
        If the volume is not 3D, ``k`` is out of range or ``context`` negative.
    """
    if volume_norm.ndim != 3:
        raise ModelError(f"volume_norm must be (Z, H, W); found shape {volume_norm.shape}")
    depth = volume_norm.shape[0]
    if not 0 <= int(k) < depth:
        raise ModelError(f"slice index k must lie in [0, {depth - 1}]; found {k}")
    if int(context) < 0:
        raise ModelError(f"context must be >= 0 slices; found {context}")
    indices = np.clip(np.arange(int(k) - int(context), int(k) + int(context) + 1), 0, depth - 1)
    return volume_norm[indices]


def _crop(image: np.ndarray, top: int, left: int, height: int, width: int, fill: float) -> np.ndarray:
    """``image[..., top:top+height, left:left+width]``, filled with ``fill`` where it leaves the image."""
    out = np.full(image.shape[:-2] + (height, width), fill, dtype=np.float32)
    h, w = image.shape[-2:]
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    if y0 < y1 and x0 < x1:
        out[..., y0 - top: y1 - top, x0 - left: x1 - left] = image[..., y0:y1, x0:x1]
    return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A case normalised once for sampling."""

    case_id: str
    mr: np.ndarray | None  # (Z, H, W) float32, None when ct_only
    ct: np.ndarray  # (Z, H, W) float32
    body: np.ndarray  # (Z, H, W) bool
    edges: np.ndarray | None  # (Z, H, W) bool CT edge map, only when ct_only
    body_slices: np.ndarray  # indices of slices holding body
    body_counts: np.ndarray  # body pixels per slice


def _prepare(case: Case, ct_only: bool) -> _Prepared:
    if case.ct is None:
        raise ModelError(f"case {case.case_id} has no ct image; training needs a CT for every case")
    body = np.asarray(case.body, dtype=bool)
    ct = normalise_ct(case.ct.array)
    ct = np.where(body, ct, np.float32(BACKGROUND)).astype(np.float32)
    counts = body.reshape(body.shape[0], -1).sum(axis=1)
    return _Prepared(
        case_id=case.case_id,
        mr=None if ct_only else normalise_mr(case.mr.array, body),
        ct=ct,
        body=body,
        edges=edge_map(ct, body) > 0 if ct_only else None,
        body_slices=np.flatnonzero(counts > 0),
        body_counts=counts,
    )


@dataclass(frozen=True, eq=False)
class _Draw:
    """The random choices of one sample, made before (and apart from) cropping its arrays."""

    case: int  # index into the dataset's cases
    mr: np.ndarray | None  # the MR volume to crop: the case's, or a randomised appearance of it
    slice_index: int
    centre: tuple[bool, int] | None  # (on the body, pick): the pick-th body pixel, or pixel `pick`; None: whole slice


class SliceDataset:
    """Random 2.5D patches (or whole slices) from normalised cases.

    Parameters
    ----------
    cases : sequence of Case
        Cases with a CT (:func:`load_cases`).
    context : int
        MR neighbours on each side (the model sees ``2 * context + 1`` MR channels).
    patch_size : int or None
        Square patch side in pixels, a positive multiple of
        :data:`SIZE_MULTIPLE`; None for whole slices, padded at the bottom and
        right to the batch's largest height and width rounded up to a multiple
        of :data:`SIZE_MULTIPLE`.
    seed : int
        Seed of the generator :meth:`sample_batch` uses when none is passed.
    body_fraction : float
        Probability in [0, 1] that a patch is centred on a body pixel.
    ct_only : bool
        For ContourDiff: return the CT, its body, the CT's edge map and the
        body outline and never touch the MR (no MR-CT pairing is needed).
    randomisation : RandomisationConfig or None
        MR appearance randomisation (:mod:`models.learned.randomisation`):
        with its probability a patch's MR is the case's label map rendered
        with a random contrast. Every case then needs a ``labels`` image.

    Raises
    ------
    ModelError
        If there are no cases, a case has no CT, or an argument is out of range.

    Notes
    -----
    The CT outside the body is set to the background (-1): the models are
    asked for air outside the outline whatever the couch or the CT's
    field-of-view border hold.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        context: int = 1,
        patch_size: int | None = 64,
        seed: int = 0,
        body_fraction: float = 0.9,
        ct_only: bool = False,
        randomisation: RandomisationConfig | None = None,
    ) -> None:
        if len(cases) == 0:
            raise ModelError("SliceDataset needs at least one case; found none")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ModelError(f"context must be an integer >= 0; found {context!r}")
        if patch_size is not None and (
            isinstance(patch_size, bool) or not isinstance(patch_size, int)
            or patch_size <= 0 or patch_size % SIZE_MULTIPLE
        ):
            raise ModelError(f"patch_size must be None or a positive multiple of {SIZE_MULTIPLE}; found {patch_size!r}")
        if not 0.0 <= float(body_fraction) <= 1.0:
            raise ModelError(f"body_fraction must lie in [0, 1]; found {body_fraction}")
        self.context = context
        self.patch_size = patch_size
        self.body_fraction = float(body_fraction)
        self.ct_only = bool(ct_only)
        self.case_ids = [c.case_id for c in cases]
        self._cases = [_prepare(c, self.ct_only) for c in cases]
        self._generator = torch.Generator().manual_seed(int(seed))
        self.randomisation = None if ct_only or randomisation is None or randomisation.probability == 0 \
            else randomisation
        self._pool: AppearancePool | None = None
        # Each case's tissue labels and MR spacing, the source of the appearance pool (with randomisation).
        self._cases_labels: list[tuple[np.ndarray, tuple[float, float, float]]] = []
        if self.randomisation is not None:
            missing = [c.case_id for c in cases if c.labels is None]
            if missing:
                raise ModelError(f"MR appearance randomisation needs a tissue label map per case ({LABELS_NAME}.mha, "
                                 f"as 'sct-node phantom' writes); missing in {', '.join(missing[:5])}"
                                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
            from models.phantoms.tissues import Tissue

            unknown = [c.case_id for c in cases if c.labels is not None and int(c.labels.max()) > max(Tissue)]
            if unknown:
                raise ModelError(f"MR appearance randomisation renders sct-node's tissue labels (0-{int(max(Tissue))}, "
                                 f"models/phantoms/tissues.py); {', '.join(unknown[:5])} hold larger label values")
            self._cases_labels = [(c.labels, c.mr.spacing_mm) for c in cases if c.labels is not None]

    def _appearance_pool(self, g: torch.Generator) -> AppearancePool:
        if self._pool is None:
            assert self.randomisation is not None  # the pool is asked for only with randomisation on
            self._pool = AppearancePool([lab for lab, _ in self._cases_labels], [sp for _, sp in self._cases_labels],
                                        [c.body for c in self._cases], self.randomisation, g)
        return self._pool

    def __len__(self) -> int:
        """Number of slices that hold body, over all cases."""
        return int(sum(len(c.body_slices) for c in self._cases))

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None, *,
                     rows: slice | None = None) -> dict[str, torch.Tensor]:
        """Draw a batch of random patches (or the given rows of one).

        Parameters
        ----------
        batch_size : int
            Number of patches, ``>= 1``.
        generator : torch.Generator or None
            Source of every random draw; the dataset's own (seeded with
            ``seed``) when None. The same generator state gives the same batch.
        rows : slice or None
            Return only these rows of the batch (one process's shard in
            data-parallel training, :mod:`models.learned.distributed`). Every
            row is still drawn, so the generator ends where it would without
            ``rows`` and the kept rows are exactly those of the whole batch;
            only the kept ones are cropped. Whole slices are padded to the
            whole batch's largest size. None: all rows.

        Returns
        -------
        dict of str to torch.Tensor
            ``float32`` tensors, ``P`` the patch size (or the padded slice size):
            paired: ``mr`` (B, 2c+1, P, P), ``ct`` (B, 1, P, P), ``body``
            (B, 1, P, P) in {0, 1};
            ``ct_only``: ``ct``, ``body``, ``edges`` (the CT's
            :func:`~models.learned.edges.edge_map`) and ``outline``
            (:func:`~models.learned.edges.outline` of the body), each (B, 1, P, P).
            Images are padded with -1, masks and edges with 0. With ``rows``,
            B is the number of rows kept.

        Raises
        ------
        ModelError
            If ``batch_size`` is not a positive integer, or ``rows`` keeps no row of it.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelError(f"batch_size must be a positive integer; found {batch_size!r}")
        g = self._generator if generator is None else generator
        draws = [self._draw(g) for _ in range(batch_size)]
        kept = draws if rows is None else draws[rows]
        if not kept:
            raise ModelError(f"rows {rows} keep no row of a batch of {batch_size}")
        samples = [self._crop_draw(draw) for draw in kept]
        if self.randomisation is not None:
            self._appearance_pool(g).after_batch(g)
        if self.patch_size is None:
            # The whole batch's largest slice, not the kept rows': every shard of a batch has the same size.
            height = _round_up(max(self._cases[d.case].body.shape[-2] for d in draws), SIZE_MULTIPLE)
            width = _round_up(max(self._cases[d.case].body.shape[-1] for d in draws), SIZE_MULTIPLE)
            samples = [
                {key: _crop(value, 0, 0, height, width, BACKGROUND if key in ("mr", "ct") else 0.0)
                 for key, value in s.items()}
                for s in samples
            ]
        return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}

    def _randint(self, high: int, g: torch.Generator) -> int:
        return int(torch.randint(high, (1,), generator=g).item())

    def _draw(self, g: torch.Generator) -> _Draw:
        """The random choices of one sample, in the order they have always been drawn (seeded runs repeat)."""
        index = self._randint(len(self._cases), g)
        case = self._cases[index]
        mr = case.mr
        if self.randomisation is not None and float(torch.rand((1,), generator=g).item()) < self.randomisation.probability:
            mr = self._appearance_pool(g).volume(index, g)
        k = int(case.body_slices[self._randint(len(case.body_slices), g)])
        centre: tuple[bool, int] | None = None
        if self.patch_size is not None:
            on_body = float(torch.rand((1,), generator=g).item()) < self.body_fraction
            height, width = case.body.shape[-2:]
            centre = (on_body, self._randint(int(case.body_counts[k]) if on_body else height * width, g))
        return _Draw(index, mr, k, centre)

    def _crop_draw(self, draw: _Draw) -> dict[str, np.ndarray]:
        """The arrays of one drawn sample (no random draw here)."""
        case, k, mr = self._cases[draw.case], draw.slice_index, draw.mr
        body = case.body[k]
        height, width = body.shape
        if draw.centre is None:
            top, left, size_y, size_x = 0, 0, height, width
        else:
            on_body, pick = draw.centre
            # The pick-th body pixel in raster order: no per-slice index list has to be kept in memory.
            flat = int(np.flatnonzero(body)[pick]) if on_body else pick
            centre_y, centre_x = divmod(flat, width)
            size_y = size_x = int(self.patch_size or 0)
            top, left = centre_y - size_y // 2, centre_x - size_x // 2
        sample = {}
        if not self.ct_only:
            assert mr is not None  # _prepare keeps the MR unless ct_only
            sample["mr"] = _crop(context_stack(mr, k, self.context), top, left, size_y, size_x, BACKGROUND)
        sample["ct"] = _crop(case.ct[k][np.newaxis], top, left, size_y, size_x, BACKGROUND)
        sample["body"] = _crop(body[np.newaxis].astype(np.float32), top, left, size_y, size_x, 0.0)
        if self.ct_only:
            assert case.edges is not None  # _prepare makes the edge map when ct_only
            sample["edges"] = _crop(case.edges[k][np.newaxis], top, left, size_y, size_x, 0.0)
            # Outline of the whole slice, then cropped: a patch border is not a body border.
            sample["outline"] = _crop(outline(body)[np.newaxis], top, left, size_y, size_x, 0.0)
        return sample


def validation_slices(cases: Sequence[Case], context: int = 1, max_slices: int = 16) -> list[dict[str, Any]]:
    """Evenly spaced whole body slices for validation metrics.

    All slices that hold body, over the cases in order, are enumerated and
    ``max_slices`` of them taken at even spacing (all of them when fewer).

    Parameters
    ----------
    cases : sequence of Case
        Cases with a CT.
    context : int
        MR neighbours on each side.
    max_slices : int
        Most slices returned, ``>= 1``.

    Returns
    -------
    list of dict
        One dict per slice: ``case_id`` (str), ``slice_index`` (int), and
        unpadded ``float32`` numpy arrays with a channel axis first, like one
        sample of :meth:`SliceDataset.sample_batch`: ``mr`` (2c+1, H, W)
        normalised, ``ct`` (1, H, W) normalised (-1 outside the body),
        ``body`` (1, H, W) in {0, 1}, and the ContourDiff condition at
        inference: ``mr_edges`` (1, H, W), the MR's
        :func:`~models.learned.edges.edge_map`, and ``outline`` (1, H, W)
        (concatenate them on axis 0 for the two condition channels).

    Raises
    ------
    ModelError
        If there are no cases, a case has no CT, or an argument is out of range.
    """
    if len(cases) == 0:
        raise ModelError("validation_slices needs at least one case; found none")
    if isinstance(max_slices, bool) or not isinstance(max_slices, int) or max_slices < 1:
        raise ModelError(f"max_slices must be a positive integer; found {max_slices!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ModelError(f"context must be an integer >= 0; found {context!r}")
    prepared = [_prepare(c, ct_only=False) for c in cases]
    candidates = [(i, int(k)) for i, p in enumerate(prepared) for k in p.body_slices]
    if len(candidates) > max_slices:
        picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, max_slices)).astype(int))
        candidates = [candidates[j] for j in picks]
    slices = []
    for i, k in candidates:
        p = prepared[i]
        assert p.mr is not None  # prepared with ct_only=False
        slices.append({
            "case_id": p.case_id,
            "slice_index": k,
            "mr": context_stack(p.mr, k, context).copy(),
            "ct": p.ct[k][np.newaxis].copy(),
            "body": p.body[k][np.newaxis].astype(np.float32),
            "mr_edges": edge_map(p.mr[k], p.body[k])[np.newaxis],
            "outline": outline(p.body[k])[np.newaxis],
        })
    return slices
