"""Process one job: read the series, run the model, write the sCT.

This is the same pipeline as ``sct-node translate``; it runs in the node's
worker threads, never in the association threads, so receiving never waits
for a model. Models are loaded once per name and shared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from pathlib import Path

from models.base import TranslationModel
from models.errors import ModelsError
from models.registry import load_model
from sct_node.dicom.reader import read_series
from sct_node.dicom.sct_writer import write_sct_series
from sct_node.errors import SctNodeError
from sct_node.state import Job, StateStore

__all__ = ["JobProcessor"]

logger = logging.getLogger(__name__)


class JobProcessor:
    """Runs jobs claimed from the state store.

    Parameters
    ----------
    state : StateStore
    destinations_of : callable
        Route name -> destination names.
    """

    def __init__(self, state: StateStore, destinations_of, qa_of=None) -> None:
        self.state = state
        self.destinations_of = destinations_of
        # Route name -> (run QA?, template-plan site, compute dose?, threshold overrides); QA off when not given.
        self.qa_of = qa_of or (lambda route: (False, "pelvis", False, {}))
        self._models: dict[str, TranslationModel] = {}
        self._models_lock = threading.Lock()

    def model(self, name: str) -> TranslationModel:
        with self._models_lock:
            if name not in self._models:
                self._models[name] = load_model(name)
            return self._models[name]

    def run_one(self) -> bool:
        """Claim and process one job; False when there was none."""
        job = self.state.claim_job()
        if job is None:
            return False
        self.process(job)
        return True

    def process(self, job: Job) -> None:
        timings: dict[str, float | str] = {}
        started = time.perf_counter()
        try:
            instances = self.state.series_instances(job.series_uid, job.generation)
            images = [i.path for i in instances if i.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.4")]
            if not images:
                raise SctNodeError("series holds no MR image instances")
            t0 = time.perf_counter()
            series = read_series(images, series_instance_uid=job.series_uid)
            timings["read_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            model = self.model(job.model)
            result = model.translate(series.volume)
            timings["model_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            output_dir = Path(job.output_dir or f"job-{job.id}")
            # A run killed part-way leaves the writer's staging folder (partial CT.*.dcm) in here, and the
            # dispatcher sends every *.dcm under the job's folder: start empty, since processing remakes it all.
            shutil.rmtree(output_dir, ignore_errors=True)
            written = write_sct_series(result.hu, series, model.card, output_dir / "sct")
            timings["write_s"] = time.perf_counter() - t0
            run_qa_here, site, with_dose, overrides = self.qa_of(job.route)
            if run_qa_here:
                t0 = time.perf_counter()
                references = self._reference_data(series)
                verdict = self._qa(result, series.volume, site, with_dose, overrides, output_dir / "qa", references)
                timings["qa_s"] = time.perf_counter() - t0
                timings["qa_verdict"] = verdict
        except (SctNodeError, ModelsError) as error:
            self.state.job_failed(job.id, str(error))
            logger.error("job %d failed: %s", job.id, error)
            return
        except Exception as error:  # a bug must fail the job, not kill the worker
            logger.exception("job %d failed with an internal error", job.id)
            self.state.job_failed(job.id, f"internal error: {type(error).__name__}: {error}")
            return
        timings["total_s"] = time.perf_counter() - started
        self.state.job_processed(job.id, self.destinations_of(job.route), json.dumps(timings))
        logger.info("job %d processed: sCT series %s, %d instances, %.1f s%s", job.id, written.series_instance_uid,
                    len(written.files), timings["total_s"],
                    f", QA {timings['qa_verdict']}" if "qa_verdict" in timings else "")

    def _reference_data(self, series) -> dict:
        """A real RT Plan, RT Structure Set and CT routed to the node in the MR's frame of reference, if any.

        The newest of each is used. A CT is used only when it lies on the MR's grid (the commissioning
        set-up: CT resampled onto the MR); anything unusable is logged and left out, and the QA falls back to
        the template plan and the bulk-density reference.
        """
        from dosimetry.plans import read_rt_plan
        from dosimetry.structures import read_structures
        from sct_node.dicom.uids import CT_IMAGE_STORAGE, RT_STRUCTURE_SET_STORAGE

        frame = series.frame_of_reference_uid
        found: dict = {}
        if not frame:
            return found
        rt_plan_storage = "1.2.840.10008.5.1.4.1.1.481.5"
        candidates = self.state.instances_in_frame((rt_plan_storage, RT_STRUCTURE_SET_STORAGE, CT_IMAGE_STORAGE),
                                                   frame)
        plans = [r.path for r in candidates if r.sop_class_uid == rt_plan_storage]
        structure_sets = [r.path for r in candidates if r.sop_class_uid == RT_STRUCTURE_SET_STORAGE]
        ct_files = [r.path for r in candidates if r.sop_class_uid == CT_IMAGE_STORAGE]
        # Each kind is read on its own: an unusable plan must not cost the structures, and so on.
        drawn_on = {series.series_instance_uid}
        if ct_files:
            with _unusable("the reference CT"):
                ct = read_series(ct_files, sop_classes=[CT_IMAGE_STORAGE])
                drawn_on.add(ct.series_instance_uid)
                if ct.volume.same_grid(series.volume):
                    found["reference_ct"] = ct.volume
                else:
                    logger.info("a CT in the MR's frame of reference was received but is not on the MR's grid; "
                                "the QA compares with the bulk-density sCT instead")
        if plans:
            with _unusable("the RT Plan"):
                found["plan"] = read_rt_plan(plans[-1], frame_of_reference_uid=frame)
        if structure_sets:
            with _unusable("the RT Structure Set"):
                found["structures"] = tuple(s for s in read_structures(
                    structure_sets[-1], series.volume, frame_of_reference_uid=frame, referenced_series_uid=drawn_on,
                    allow_empty=True) if s.mask.any())
        return found

    @staticmethod
    def _qa(result, mr_grid, site: str, with_dose: bool, overrides: dict, folder: Path, references: dict) -> str:
        """Dosimetric QA of the sCT (dosimetry.qa); the verdict is recorded, the sCT is delivered either way.

        A QA that cannot run (e.g. no bone to place a template plan on) is recorded as ERROR in the job's
        timings and logged; it never fails the job, whose sCT is valid DICOM regardless.
        """
        from dosimetry.errors import DosimetryError
        from dosimetry.qa import QaInputs, run_qa, write_qa
        from dosimetry.verdict import thresholds_from_mapping

        try:
            qa = run_qa(QaInputs(sct=result.hu, site=site, mr_body_mask=result.body_mask,
                                 mr_grid=mr_grid, uncertainty_hu=result.uncertainty_hu, compute_dose=with_dose,
                                 plan=references.get("plan"), structures=references.get("structures", ()),
                                 reference_ct=references.get("reference_ct")),
                        thresholds_from_mapping(overrides))
        except DosimetryError as error:
            logger.warning("QA could not run: %s", error)
            return "ERROR"
        except Exception:  # a QA bug must not cost the patient's sCT: log it, deliver anyway
            logger.exception("QA failed with an internal error; the sCT is delivered without QA")
            return "ERROR"
        write_qa(qa, folder)
        return qa.verdict.value


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
