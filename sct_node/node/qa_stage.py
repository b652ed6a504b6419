"""The node's QA and report stages for one processed series.

Once the model has made the sCT, the node

1. gathers reference data routed to it in the MR's frame of reference — the
   newest RT Plan, RT Structure Set and real CT (:func:`reference_data`; this
   runs while the model works, see :mod:`sct_node.node.process`), after
   fetching from the PACS what the route asks for and the node does not hold
   (``fetch_references``, :mod:`sct_node.node.retrieve`);
2. runs the dosimetric QA on the sCT in memory (``qa/qa.json``,
   ``qa/qa_arrays.npz``; :func:`run_qa_stage`);
3. writes the sCT once (``sct/``), its Series Description already marked
   ``QA FAIL`` / ``QA WARN`` (never rewritten afterwards);
4. builds the report bundle (``report/``, ``rt/``; :func:`run_report_stage`)
   and applies the route's policy for a FAIL: deliver the sCT marked
   ``QA FAIL`` (default) or hold it back (``held/``) and deliver only the
   report, until ``sct-node release JOB``. The hold follows the QA's verdict,
   so a FAIL is held back even when its report cannot be built.

Neither stage can cost the patient's sCT: a QA or report that cannot be made
is logged and recorded as ``ERROR`` in the job's timings, and the sCT is
delivered as it is.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from dosimetry.verdict import Verdict
from models.base import ModelCard, SyntheticCT
from sct_node.config import RouteConfig
from sct_node.dicom.reader import ImageSeries, read_series
from sct_node.dicom.uids import (
    CT_IMAGE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
)
from sct_node.errors import SctNodeError
from sct_node.job_folder import JobFolder
from sct_node.node.state import StateStore

if TYPE_CHECKING:
    import numpy as np

    from dosimetry.plans import PhotonPlan
    from dosimetry.qa import ReferenceDose
    from dosimetry.qa_result import QaResult
    from dosimetry.structures import StructureMask
    from models.volume import Volume
    from sct_node.node.retrieve import FetchOutcome, ReferenceFetcher

__all__ = ["References", "holds_back", "prepare_references", "read_references", "reference_data", "release_held", "run_qa_stage",
           "run_report_stage"]

logger = logging.getLogger(__name__)


@dataclass
class References:
    """Reference data for the QA, and the files it came from (recorded in ``qa.json``)."""

    plan: PhotonPlan | None = None
    structures: tuple[StructureMask, ...] = ()
    reference_ct: Volume | None = None
    plan_file: Path | None = None
    structures_file: Path | None = None
    reference_ct_files: tuple[Path, ...] = field(default_factory=tuple)
    #: The plan's dose on the real CT, computed before the sCT exists (:func:`prepare_references`).
    reference_dose: ReferenceDose | None = None
    #: What fetching reference data from the PACS did, for the report (``qa.json`` context): what was fetched,
    #: and what could not be and what the QA used instead.
    notes: tuple[str, ...] = ()


def prepare_references(state: StateStore, series: ImageSeries, body: np.ndarray, route: RouteConfig,
                       fetcher: ReferenceFetcher | None = None) -> References:
    """The QA's reference data (:func:`reference_data`) and, with a real CT and the dose checks on, the plan's
    dose on that CT (:func:`dosimetry.qa.reference_dose`): neither needs the sCT, so the node runs this while
    the model works. A reference dose that cannot be computed is left to the QA, which meets the same error and
    reports it.

    With a ``fetcher`` and a route with ``fetch_references``, the kinds the node holds none of in the MR's frame
    of reference are fetched from the route's PACS first (:meth:`ReferenceFetcher.fetch`, which never raises);
    what it did is kept in :attr:`References.notes`.
    """
    outcome: FetchOutcome | None = None
    notes: tuple[str, ...] = ()
    if fetcher is not None and route.fetch_references and route.fetch_from is not None:
        if not series.frame_of_reference_uid:
            notes = ("no reference data were fetched: the MR has no Frame of Reference UID to match them by",)
        held = _candidates(state, series)
        missing = [kind for kind in route.fetch_references if not held[kind]]
        if missing and series.frame_of_reference_uid:
            study_uid = str(series.header.get("StudyInstanceUID", "") or "")
            outcome = fetcher.fetch(study_uid, missing, route.fetch_from, series.series_instance_uid)
    references = reference_data(state, series)
    references.notes = notes
    if outcome is not None:
        held = _candidates(state, series)
        usable = {"ct": references.reference_ct is not None, "plan": references.plan is not None,
                  "structures": references.structures_file is not None}
        references.notes = outcome.notes([k for k in outcome.kinds if held[k]], [k for k in outcome.kinds if usable[k]])
    if references.reference_ct is None or not route.qa_dose:
        return references
    import dataclasses

    from dosimetry.errors import DosimetryError
    from dosimetry.qa import reference_dose

    try:
        dose = reference_dose(series.volume, body, references.reference_ct, site=route.qa_site,
                              plan=references.plan, structures=references.structures,
                              dose_grid_mm=route.qa_dose_grid_mm)
    except DosimetryError as error:
        logger.debug("the reference dose is left to the QA: %s", error)
        return references
    except Exception:  # a bug here must not cost the QA: it computes the reference dose itself
        logger.exception("the reference dose could not be computed ahead; the QA computes it")
        return references
    return dataclasses.replace(references, reference_dose=dose)


def reference_data(state: StateStore, series: ImageSeries) -> References:
    """The newest RT Plan, RT Structure Set and real CT series routed to the node in the MR's frame of reference.

    A CT is used only when it lies on the MR's grid (the commissioning set-up: CT resampled onto the MR).
    A structure set must be drawn on the MR or on that CT. Each piece is read on its own; anything unusable
    is logged and left out, and the QA falls back to the template plan and the bulk-density reference
    (:func:`read_references`).
    """
    if not series.frame_of_reference_uid:
        return References()
    candidates = _candidates(state, series)
    plans, structure_sets = candidates["plan"], candidates["structures"]
    return read_references(series, reference_ct=candidates["ct"], plan=plans[-1] if plans else None,
                           structures=structure_sets[-1] if structure_sets else None)


def _candidates(state: StateStore, series: ImageSeries) -> dict[str, list[Path]]:
    """The node's reference data in the MR's frame of reference, oldest first, by kind (ct, plan, structures).

    ``ct`` is the newest CT series that is not synthetic (:func:`_is_synthetic_ct`): a PACS holds the node's
    own sCTs in the MR's study and frame (it delivered them there), and a vendor's sCT looks the same; neither
    is a reference for an sCT. Only one series: the instances of two CT series do not make one volume.
    """
    frame = series.frame_of_reference_uid
    if not frame:
        return {"ct": [], "plan": [], "structures": []}
    records = state.instances_in_frame((RT_PLAN_STORAGE, RT_STRUCTURE_SET_STORAGE, CT_IMAGE_STORAGE), frame)
    ct_series: dict[str, list[Path]] = {}
    for record in records:
        if record.sop_class_uid == CT_IMAGE_STORAGE:
            # Re-inserted at each instance, so the series whose last instance came last ends up last.
            ct_series[record.series_uid] = [*ct_series.pop(record.series_uid, []), record.path]
    real = next((files for files in reversed(ct_series.values()) if not _is_synthetic_ct(files[0])), [])
    return {"ct": real, "plan": [r.path for r in records if r.sop_class_uid == RT_PLAN_STORAGE],
            "structures": [r.path for r in records if r.sop_class_uid == RT_STRUCTURE_SET_STORAGE]}


def _is_synthetic_ct(path: Path) -> bool:
    """Whether a CT instance is a synthetic CT made from another image: Synthetic Data YES and Image Type
    DERIVED (what the node writes, PS3.3 C.7.6.1.1.2; vendors' sCTs too). A phantom's CT is synthetic but
    ORIGINAL, and stands in for a real CT. An unreadable header is not judged here: the reader reports it."""
    from sct_node.dicom.files import open_dataset

    try:
        header = open_dataset(path)
    except Exception:  # noqa: BLE001  read_references meets and logs the same problem
        return False
    image_type = header.get("ImageType", None)
    first = str(image_type[0] if isinstance(image_type, list | pydicom.multival.MultiValue) and image_type
                else image_type or "")
    return str(header.get("SyntheticData", "") or "").upper() == "YES" and first.upper() == "DERIVED"


def read_references(image: ImageSeries, *, reference_ct: Sequence[Path] = (), plan: Path | None = None,
                    structures: Path | None = None, drawn_on: Iterable[str] = (), strict: bool = False) -> References:
    """Read the QA's reference data in ``image``'s frame of reference and on its grid: the one reader of the
    node (:func:`reference_data`: ``image`` is the MR, the files were routed to it) and of ``sct-node qa``
    (``strict``: ``image`` is the sCT, the files were named on the command line).

    A reference CT (its files or folder) is used only when it shares ``image``'s frame and grid; a structure set
    must be drawn on ``image``, on that CT or on a series in ``drawn_on``; structures with no voxel on the grid
    are left out. With ``strict`` a CT off the grid is refused, a structure left out is warned about, and any
    piece that cannot be read raises. Otherwise each piece is read on its own, and anything unusable (an
    unreadable piece, a CT off the grid) is logged and left out.
    """
    from dosimetry.plans import read_rt_plan
    from dosimetry.structures import read_structures
    from sct_node.dicom.files import open_dataset
    from sct_node.errors import InputError

    def guard(what: str) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext() if strict else _unusable(what)

    found = References()
    frame = image.frame_of_reference_uid
    drawn = {image.series_instance_uid, *drawn_on}
    if reference_ct:
        with guard("the reference CT"):
            ct = read_series(list(reference_ct), sop_classes=[CT_IMAGE_STORAGE])
            drawn.add(ct.series_instance_uid)
            if ct.frame_of_reference_uid == frame and ct.volume.same_grid(image.volume):
                found.reference_ct, found.reference_ct_files = ct.volume, tuple(ct.files)
            elif strict:
                raise InputError(f"{', '.join(map(str, reference_ct))}: the reference CT must share the sCT's frame "
                                 "of reference and grid (resample it onto the MR first)")
            else:
                logger.info("a CT in the MR's frame of reference was received but is not on the MR's grid; "
                            "the QA compares with the bulk-density sCT instead")
    if plan is not None:
        with guard("the RT Plan"):
            found.plan = read_rt_plan(open_dataset(plan), frame_of_reference_uid=frame, source_name=str(plan))
            found.plan_file = plan
    if structures is not None:
        with guard("the RT Structure Set"):
            masks = read_structures(structures, image.volume, frame_of_reference_uid=frame,
                                    referenced_series_uid=drawn, allow_empty=True)
            for empty in (s for s in masks if strict and not s.mask.any()):
                logger.warning("structure %s has no voxel on the sCT grid; it is left out of the DVH comparison",
                               empty.name)
            found.structures = tuple(s for s in masks if s.mask.any())
            found.structures_file = structures
    return found


def run_qa_stage(result: SyntheticCT, series: ImageSeries, model_card: ModelCard, route: RouteConfig,
                 output_dir: Path, references: References,
                 input_guard: tuple[str, tuple[str, ...]] | None = None) -> QaResult | None:
    """Run the QA of an sCT into ``output_dir/qa``; returns its result, or None when it could not run.

    ``input_guard`` is the input guard's (verdict, reasons): a soft mismatch makes the QA WARN at best,
    a hard one generated anyway FAIL (the ``input_envelope`` check, docs/qa.md).
    """
    import dataclasses

    from dosimetry.errors import DosimetryError
    from dosimetry.hu_reference import load_hu_reference
    from dosimetry.qa import QaInputs, run_qa
    from dosimetry.qa_result import write_qa
    from sct_node.report.context import qa_context

    try:
        hu_reference = load_hu_reference(route.qa_hu_reference) if route.qa_hu_reference is not None else None
        record = run_qa(QaInputs(sct=result.hu, site=route.qa_site, hu_reference=hu_reference,
                             mr_body_mask=result.body_mask, mr_grid=series.volume,
                             uncertainty_hu=result.uncertainty_hu, compute_dose=route.qa_dose,
                             dose_grid_mm=route.qa_dose_grid_mm,
                             plan=references.plan, structures=references.structures,
                             reference_ct=references.reference_ct, reference_dose=references.reference_dose,
                             input_guard=input_guard),
                    route.thresholds)
    except DosimetryError as error:
        logger.warning("QA could not run: %s", error)
        return None
    except Exception:  # a QA bug must not cost the patient's sCT: log it, deliver anyway
        logger.exception("QA failed with an internal error; the sCT is delivered without QA")
        return None
    card = dataclasses.asdict(model_card) | {"identity": model_card.identity}
    context = qa_context(sct_dir=output_dir / JobFolder.SCT, model_card=card, mr_files=series.files,
                         mr_series_uid=series.series_instance_uid,
                         mr_series_description=str(series.header.get("SeriesDescription", "") or ""),
                         reference_ct_files=references.reference_ct_files, structures_file=references.structures_file,
                         plan_file=references.plan_file, site=route.qa_site, reference_notes=references.notes)
    write_qa(record, output_dir / JobFolder.QA, context)
    return record.result


def holds_back(verdict: Verdict | None, route: RouteConfig) -> bool:
    """Whether the route holds the sCT back after this QA verdict (``on_qa_fail = "hold"`` and a FAIL)."""
    return verdict == Verdict.FAIL and route.on_qa_fail == "hold"


def run_report_stage(output_dir: Path, route: RouteConfig, verdict: Verdict) -> tuple[Verdict | None, bool]:
    """Build the bundle from ``output_dir/qa`` for the sCT in ``output_dir/sct`` and apply the FAIL policy.

    ``verdict`` is the QA's: it decides the hold, whether or not the bundle can be built. The sCT was
    written already marked with it, so nothing here rewrites the sCT.

    Returns
    -------
    (Verdict or None, bool)
        The verdict the bundle reports (None when it could not be built) and whether the sCT was held back.
    """
    from sct_node.report.bundle import build_bundle

    reported: Verdict | None
    try:
        reported = build_bundle(output_dir / JobFolder.QA, output_dir, rt_dose=route.qa_rt_dose).verdict
    except Exception:  # the sCT is valid without its report: deliver it (or hold it after a FAIL), say so
        logger.exception("the QA report bundle could not be built; the sCT %s without it",
                         "is held back" if holds_back(verdict, route) else "is delivered")
        shutil.rmtree(output_dir / JobFolder.REPORT, ignore_errors=True)
        shutil.rmtree(output_dir / JobFolder.RT, ignore_errors=True)
        reported = None
    if not holds_back(verdict, route):
        return reported, False
    held = output_dir / JobFolder.HELD
    held.mkdir(exist_ok=True)
    for name in JobFolder.held_back():
        if (output_dir / name).exists():
            (output_dir / name).rename(held / name)
    return reported, True


def release_held(output_dir: Path) -> int:
    """Move a held-back sCT and its RT objects back among the job's outputs; returns the files moved.

    The sCT is marked ``QA FAIL`` on the way, since it is delivered after a failed QA (a node writes it marked
    already; folders from a node before that are marked here).
    """
    from sct_node.report.bundle import mark_sct_series

    held = Path(output_dir) / JobFolder.HELD
    moved = 0
    if not held.exists():
        return 0
    for name in JobFolder.held_back():
        if (held / name).exists():
            moved += sum(1 for _ in (held / name).glob("*.dcm"))
            shutil.rmtree(Path(output_dir) / name, ignore_errors=True)
            (held / name).rename(Path(output_dir) / name)
    mark_sct_series(sorted((Path(output_dir) / JobFolder.SCT).glob("*.dcm")), Verdict.FAIL)
    held.rmdir()
    return moved


@contextlib.contextmanager
def _unusable(what: str) -> Iterator[None]:
    """Log and swallow the failure to read one piece of QA reference data: the QA runs without it."""
    from dosimetry.errors import DosimetryError

    try:
        yield
    except (DosimetryError, SctNodeError) as error:
        logger.warning("%s routed for the QA is not used: %s", what, error)
    except Exception:  # unusable reference data must never cost the sCT
        logger.exception("%s routed for the QA could not be read; the QA runs without it", what)
