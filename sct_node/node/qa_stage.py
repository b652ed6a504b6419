"""The node's QA and report stages for one processed series.

After the sCT is written (``sct/``), the node

1. gathers reference data routed to it in the MR's frame of reference — the
   newest RT Plan, RT Structure Set and CT (:func:`reference_data`);
2. runs the dosimetric QA (``qa/qa.json``, ``qa/qa_arrays.npz``; :func:`run_qa_stage`);
3. builds the report bundle (``report/``, ``rt/``; :func:`run_report_stage`)
   and applies the route's policy for a FAIL: deliver the sCT marked
   ``QA FAIL`` (default) or hold it back (``held/``) and deliver only the
   report, until ``sct-node release JOB``.

Neither stage can cost the patient's sCT: a QA or report that cannot be made
is logged and recorded as ``ERROR`` in the job's timings, and the sCT is
delivered as it is.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dosimetry.verdict import Verdict
from sct_node.config import RouteConfig
from sct_node.dicom.reader import ImageSeries, read_series
from sct_node.dicom.uids import (
    CT_IMAGE_STORAGE,
    RT_PLAN_STORAGE,
    RT_STRUCTURE_SET_STORAGE,
)
from sct_node.errors import SctNodeError
from sct_node.node.state import StateStore

__all__ = ["HELD_DIR", "References", "reference_data", "release_held", "run_qa_stage", "run_report_stage"]

logger = logging.getLogger(__name__)

#: Sub-folder of a job's outputs that the dispatcher never sends (a held-back sCT and its RT objects).
HELD_DIR = "held"


@dataclass
class References:
    """Reference data for the QA, and the files it came from (recorded in ``qa.json``)."""

    plan: object | None = None
    structures: tuple = ()
    reference_ct: object | None = None
    plan_file: Path | None = None
    structures_file: Path | None = None
    reference_ct_files: tuple[Path, ...] = field(default_factory=tuple)


def reference_data(state: StateStore, series: ImageSeries) -> References:
    """The newest RT Plan, RT Structure Set and CT routed to the node in the MR's frame of reference.

    A CT is used only when it lies on the MR's grid (the commissioning set-up: CT resampled onto the MR).
    A structure set must be drawn on the MR or on that CT. Each piece is read on its own; anything unusable
    is logged and left out, and the QA falls back to the template plan and the bulk-density reference.
    """
    from dosimetry.plans import read_rt_plan
    from dosimetry.structures import read_structures
    from sct_node.dicom.files import open_dataset

    found = References()
    frame = series.frame_of_reference_uid
    if not frame:
        return found
    candidates = state.instances_in_frame((RT_PLAN_STORAGE, RT_STRUCTURE_SET_STORAGE, CT_IMAGE_STORAGE), frame)
    plans = [r.path for r in candidates if r.sop_class_uid == RT_PLAN_STORAGE]
    structure_sets = [r.path for r in candidates if r.sop_class_uid == RT_STRUCTURE_SET_STORAGE]
    ct_files = [r.path for r in candidates if r.sop_class_uid == CT_IMAGE_STORAGE]
    drawn_on = {series.series_instance_uid}
    if ct_files:
        with _unusable("the reference CT"):
            ct = read_series(ct_files, sop_classes=[CT_IMAGE_STORAGE])
            drawn_on.add(ct.series_instance_uid)
            if ct.volume.same_grid(series.volume):
                found.reference_ct, found.reference_ct_files = ct.volume, tuple(ct.files)
            else:
                logger.info("a CT in the MR's frame of reference was received but is not on the MR's grid; "
                            "the QA compares with the bulk-density sCT instead")
    if plans:
        with _unusable("the RT Plan"):
            found.plan = read_rt_plan(open_dataset(plans[-1]), frame_of_reference_uid=frame,
                                      source_name=str(plans[-1]))
            found.plan_file = plans[-1]
    if structure_sets:
        with _unusable("the RT Structure Set"):
            found.structures = tuple(s for s in read_structures(
                structure_sets[-1], series.volume, frame_of_reference_uid=frame, referenced_series_uid=drawn_on,
                allow_empty=True) if s.mask.any())
            found.structures_file = structure_sets[-1]
    return found


def run_qa_stage(result, series: ImageSeries, model_card, route: RouteConfig, output_dir: Path,
                 references: References, input_guard: tuple[str, tuple[str, ...]] | None = None) -> Verdict | None:
    """Run the QA of a written sCT into ``output_dir/qa``; returns the verdict, or None when it could not run.

    ``input_guard`` is the input guard's (verdict, reasons): a soft mismatch makes the QA WARN at best,
    a hard one generated anyway FAIL (the ``input_envelope`` check, docs/qa.md).
    """
    import dataclasses

    from dosimetry.errors import DosimetryError
    from dosimetry.hu_reference import load_hu_reference
    from dosimetry.qa import QaInputs, run_qa
    from dosimetry.qa_result import write_qa
    from dosimetry.verdict import thresholds_from_mapping
    from sct_node.report.context import qa_context

    try:
        hu_reference = load_hu_reference(route.qa_hu_reference) if route.qa_hu_reference is not None else None
        record = run_qa(QaInputs(sct=result.hu, site=route.qa_site, hu_reference=hu_reference,
                             mr_body_mask=result.body_mask, mr_grid=series.volume,
                             uncertainty_hu=result.uncertainty_hu, compute_dose=route.qa_dose,
                             dose_grid_mm=route.qa_dose_grid_mm,
                             plan=references.plan, structures=references.structures,
                             reference_ct=references.reference_ct, input_guard=input_guard),
                    thresholds_from_mapping(route.qa_thresholds))
    except DosimetryError as error:
        logger.warning("QA could not run: %s", error)
        return None
    except Exception:  # a QA bug must not cost the patient's sCT: log it, deliver anyway
        logger.exception("QA failed with an internal error; the sCT is delivered without QA")
        return None
    card = dataclasses.asdict(model_card) | {"identity": model_card.identity}
    context = qa_context(sct_dir=output_dir / "sct", model_card=card, mr_files=series.files,
                         mr_series_uid=series.series_instance_uid,
                         mr_series_description=str(series.header.get("SeriesDescription", "") or ""),
                         reference_ct_files=references.reference_ct_files, structures_file=references.structures_file,
                         plan_file=references.plan_file, site=route.qa_site)
    write_qa(record, output_dir / "qa", context)
    return record.verdict


def run_report_stage(output_dir: Path, route: RouteConfig) -> tuple[Verdict | None, bool]:
    """Build the bundle from ``output_dir/qa`` and apply the FAIL policy.

    Returns
    -------
    (Verdict or None, bool)
        The verdict the bundle reports (None when it could not be built) and whether the sCT was held back.
    """
    from sct_node.report.bundle import build_bundle, mark_sct_series

    try:
        bundle = build_bundle(output_dir / "qa", output_dir, rt_dose=route.qa_rt_dose)
    except Exception:  # the sCT is valid without its report: deliver it, say so
        logger.exception("the QA report bundle could not be built; the sCT is delivered without it")
        shutil.rmtree(output_dir / "report", ignore_errors=True)
        shutil.rmtree(output_dir / "rt", ignore_errors=True)
        return None, False
    if bundle.verdict == Verdict.FAIL and route.on_qa_fail == "hold":
        held = output_dir / HELD_DIR
        held.mkdir(exist_ok=True)
        for name in ("sct", "rt"):
            if (output_dir / name).exists():
                (output_dir / name).rename(held / name)
        return bundle.verdict, True
    mark_sct_series(sorted((output_dir / "sct").glob("*.dcm")), bundle.verdict)
    return bundle.verdict, False


def release_held(output_dir: Path) -> int:
    """Move a held-back sCT and its RT objects back among the job's outputs; returns the files moved.

    The sCT is marked ``QA FAIL`` on the way, since it is delivered after a failed QA.
    """
    from sct_node.report.bundle import mark_sct_series

    held = Path(output_dir) / HELD_DIR
    moved = 0
    if not held.exists():
        return 0
    for name in ("sct", "rt"):
        if (held / name).exists():
            moved += sum(1 for _ in (held / name).glob("*.dcm"))
            shutil.rmtree(Path(output_dir) / name, ignore_errors=True)
            (held / name).rename(Path(output_dir) / name)
    mark_sct_series(sorted((Path(output_dir) / "sct").glob("*.dcm")), Verdict.FAIL)
    held.rmdir()
    return moved


@contextlib.contextmanager
def _unusable(what: str):
    """Log and swallow the failure to read one piece of QA reference data: the QA runs without it."""
    from dosimetry.errors import DosimetryError

    try:
        yield
    except (DosimetryError, SctNodeError) as error:
        logger.warning("%s routed for the QA is not used: %s", what, error)
    except Exception:  # unusable reference data must never cost the sCT
        logger.exception("%s routed for the QA could not be read; the QA runs without it", what)
