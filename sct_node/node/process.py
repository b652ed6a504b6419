"""Process one job: read the series, guard the input, run the model, QA it, write the sCT, report.

This is the pipeline of ``sct-node translate`` with the QA and report stages
(:mod:`sct_node.node.qa_stage`); it runs in the node's worker threads, never
in the association threads, so receiving never waits for a model. Models are
loaded once per name and shared.

Nothing waits that need not: the QA's reference data (and, with a real CT, its
reference dose) are read and computed in another thread while the model
works; the sCT is written once, after its QA, already marked with the
verdict; and its images are sent ahead to the destinations while the report
is rendered (:meth:`sct_node.node.dispatch.Dispatcher.send_ahead`), so the
job's deliveries carry only the rest of the bundle.

Before the model runs, the input guard (:func:`models.envelope.guard`) checks
the series against the model's training envelope. The route's
``on_input_outside_envelope`` decides: a refused job fails with the guard's
reasons as its reason (``sct-node status``); otherwise the sCT is made, marked
in its Image Comments when the verdict is not ``ok``. Either way the result is
saved as ``guard.json`` in the job's output folder (:func:`write_guard_json`),
for the QA report.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from models.base import TranslationModel
from models.body_mask import body_mask_from_mr
from models.envelope import GuardResult, guard, refuses
from models.errors import ModelsError
from models.fileio import write_atomic
from models.registry import load_model
from sct_node.config import RouteConfig
from sct_node.dicom.reader import ImageSeries, read_series
from sct_node.dicom.sct_writer import write_sct_series
from sct_node.dicom.uids import MR_SOP_CLASSES
from sct_node.errors import OutputError, SctNodeError
from sct_node.job_folder import JobFolder
from sct_node.node.qa_stage import holds_back, prepare_references, run_qa_stage, run_report_stage
from sct_node.node.spool import Spool
from sct_node.node.state import Job, JobTimings, StateStore, with_trend_numbers
from sct_node.report.bundle import verdict_prefix

if TYPE_CHECKING:
    from sct_node.node.metrics import NodeMetrics
    from sct_node.node.retrieve import ReferenceFetcher

__all__ = ["GUARD_FILE", "JobProcessor", "guard_input", "input_warning", "write_guard_json"]

logger = logging.getLogger(__name__)

#: The input guard's result in a job's output folder.
GUARD_FILE = "guard.json"

#: Sends a job's sCT images ahead: (job id, output folder, destination names) -> the names that accepted them.
SendAhead = Callable[[int, Path, tuple[str, ...]], tuple[str, ...]]

_T = TypeVar("_T")


def guard_input(series: ImageSeries, model: TranslationModel, body: np.ndarray | None = None) -> GuardResult:
    """The input guard's judgement of a series for the model that would run (its envelope and normalisation).

    ``body`` is the MR's body mask when the caller has it (it then passes the same mask to the model).
    """
    return guard(series.header, series.volume, getattr(model, "envelope", None),
                 normalise=getattr(model, "normalise", None), body=body, model_name=f"model {model.card.name}")


def input_warning(result: GuardResult, allowed_by: str) -> str | None:
    """The text recorded on an sCT made from a series outside the envelope; None when the verdict is ok or unjudged."""
    if result.verdict not in ("soft", "hard"):
        return None
    return (f"INPUT OUTSIDE THE MODEL'S TRAINING ENVELOPE ({result.verdict}; made by {allowed_by}): "
            + "; ".join(result.reasons))


def write_guard_json(result: GuardResult, folder: Path, *, model: str, policy: str, action: str) -> Path:
    """Write ``guard.json`` atomically: the guard result plus the model identity, the policy and what was done.

    ``action`` is ``refused`` (no sCT), ``marked`` (sCT made from a series outside the envelope) or ``passed``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GUARD_FILE
    data = {**result.to_json(), "model": model, "policy": policy, "action": action}
    text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    try:
        write_atomic(path, lambda stream: stream.write(text))
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    return path


class JobProcessor:
    """Runs jobs claimed from the state store.

    Parameters
    ----------
    state : StateStore
    route_of : callable
        Route name -> its :class:`~sct_node.config.RouteConfig` (None for a route no longer configured:
        the sCT is made without QA and delivered nowhere).
    spool : Spool
        The node's spool: a job's output folder must be one of its ``outputs/job-N`` folders.
    send_ahead : callable or None
        Sends the sCT images to the destinations while the report is rendered
        (:meth:`sct_node.node.dispatch.Dispatcher.send_ahead`); None: the deliveries send everything.
    metrics : NodeMetrics or None
        Counts jobs, their verdicts and stage times.
    fetcher : ReferenceFetcher or None
        Fetches the reference data a route asks for from the PACS (``fetch_references``), with the others
        while the model works; None: only what was routed to the node is used.
    """

    def __init__(self, state: StateStore, route_of: Callable[[str], RouteConfig | None], spool: Spool,
                 send_ahead: SendAhead | None = None, metrics: NodeMetrics | None = None,
                 fetcher: ReferenceFetcher | None = None) -> None:
        self.state = state
        self.fetcher = fetcher
        self.route_of = route_of
        self.spool = spool
        self.send_ahead = send_ahead
        self.metrics = metrics
        self._models: dict[tuple[str, tuple[tuple[str, int | None], ...]], TranslationModel] = {}
        self._models_lock = threading.Lock()

    def model(self, name: str, route: RouteConfig | None = None) -> TranslationModel:
        """The model of a job, loaded once per (name, sampling settings) and shared by the workers."""
        options: dict[str, int | None] = {} if route is None or name == "bulk" else {
            "steps": route.model_steps, "ensemble": route.model_ensemble}
        key = (name, tuple(sorted(options.items())))
        with self._models_lock:
            if key not in self._models:
                self._models[key] = load_model(name, **options)
            return self._models[key]

    def loaded_models(self) -> list[TranslationModel]:
        """The models loaded so far (by the preload or a job)."""
        with self._models_lock:
            return list(self._models.values())

    def run_one(self) -> bool:
        """Claim and process one job; False when there was none."""
        job = self.state.claim_job()
        if job is None:
            return False
        self.process(job)
        return True

    def _refuse(self, job: Job, route: RouteConfig | None, series: ImageSeries, checked: GuardResult,
                model: TranslationModel, policy: str, output_dir: Path, reason: str, timings: JobTimings,
                started: float) -> None:
        """No sCT: write the refusal notice (SR and PDF, sct_node.report.refusal) and send it where the sCT would go."""
        from sct_node.report.refusal import write_refusal_notice

        destinations = route.destinations if route is not None else ()
        try:
            write_refusal_notice(mr_files=series.files, volume=series.volume.array, result=checked,
                                 model_identity=model.card.identity, model_name=model.card.name, policy=policy,
                                 folder=output_dir / JobFolder.REPORT, job_id=job.id)
        except Exception:  # the refusal stands without its notice; say so where the operator looks
            logger.exception("job %d: the refusal notice could not be written; the job fails without it", job.id)
            destinations = ()
            reason += " (the refusal notice could not be written: see the log)"
        self.state.job_refused(job.id, reason, destinations, replace(timings, total_s=_since(started)),
                               claim=job.claims)
        if self.metrics is not None:
            self.metrics.job_refused(replace(timings, total_s=_since(started)))
        logger.warning("job %d refused by the input guard (%s mismatch with model %s); %s", job.id, checked.verdict,
                       model.card.name, "the notice (SR, PDF) goes to " + ", ".join(destinations) if destinations
                       else "no destination: no notice sent")

    def process(self, job: Job) -> None:
        """Run one claimed job to its end state: processed (delivering, held, done), refused or failed."""
        timings = JobTimings()
        started = time.perf_counter()
        route = self.route_of(job.route)
        held = False
        images_sent: tuple[str, ...] = ()
        try:
            instances = self.state.series_instances(job.series_uid, job.generation)
            # The MR image classes by UID, not by prefix: "1.2.840.10008.5.1.4.1.1.4" also begins the RT classes
            # (...1.1.481.x) and MR Spectroscopy (...1.1.4.2).
            images = [i.path for i in instances if i.sop_class_uid in MR_SOP_CLASSES]
            if not images:
                raise SctNodeError("series holds no MR image instances")
            t0 = time.perf_counter()
            series = read_series(images, series_instance_uid=job.series_uid)
            timings = replace(timings, read_s=_since(t0))
            model = self.model(job.model, route)
            output_dir = Path(job.output_dir) if job.output_dir else self.spool.job_dir(job.id)
            t0 = time.perf_counter()
            policy = route.on_input_outside_envelope if route is not None else "refuse-hard"
            # One body mask for the guard and the model (the guard judges what the model will see).
            body = body_mask_from_mr(series.volume)
            checked = guard_input(series, model, body)
            timings = replace(timings, guard_s=_since(t0), guard_verdict=checked.verdict)
            refused = refuses(checked, policy)
            # A run killed part-way leaves the writer's staging folder (partial CT.*.dcm) in here, and the
            # dispatcher sends every *.dcm under the job's folder: start empty, since processing remakes it all.
            # The spool removes only outputs/job-N folders (SpoolPathError, an SctNodeError, fails the job).
            self.spool.remove_job_dir(output_dir)
            write_guard_json(checked, output_dir, model=model.card.identity, policy=policy,
                             action="refused" if refused else "marked" if checked.verdict in ("soft", "hard")
                             else "passed")
            if refused:
                reason = (f"input refused by the input guard (route on_input_outside_envelope = \"{policy}\"): "
                          f"{checked.verdict} mismatch with the training envelope of model {model.card.name}: "
                          f"{'; '.join(checked.reasons)}")
                self._refuse(job, route, series, checked, model, policy, output_dir, reason, timings, started)
                return
            if checked.verdict in ("soft", "hard"):
                logger.warning("job %d: %s", job.id, checked.summary())
            # The QA's reference data (and a real CT's reference dose) do not need the sCT: read them meanwhile.
            references = (_in_background(f"job-{job.id}-references", prepare_references, self.state, series, body,
                                         route, self.fetcher) if route is not None and route.qa else None)
            t0 = time.perf_counter()
            result = model.translate(series.volume, body_mask=body)
            timings = replace(timings, model_s=_since(t0))
            verdict = None
            if route is not None and references is not None:
                t0 = time.perf_counter()
                qa = run_qa_stage(result, series, model.card, route, output_dir, references.result(),
                                  input_guard=(checked.verdict, tuple(checked.reasons)))
                verdict = qa.verdict if qa is not None else None
                # The job's record keeps text: a verdict, or ERROR for a QA or report that could not be made;
                # and the few numbers the console's trends follow (they outlive the job's folder).
                timings = replace(timings, qa_s=_since(t0),
                                  qa_verdict=verdict.value if verdict is not None else "ERROR")
                if qa is not None:
                    timings = with_trend_numbers(timings, qa)
            # Written once, after the QA, marked with its verdict: what is delivered is never rewritten.
            t0 = time.perf_counter()
            written = write_sct_series(result.hu, series, model.card, output_dir / JobFolder.SCT,
                                       input_warning=input_warning(
                                           checked, f"route on_input_outside_envelope = \"{policy}\""),
                                       description_prefix=verdict_prefix(verdict) if verdict is not None else "")
            timings = replace(timings, write_s=_since(t0))
            if route is not None and verdict is not None and route.qa_report:
                ahead = (_in_background(f"job-{job.id}-send-ahead", self.send_ahead, job.id, output_dir,
                                        route.destinations)
                         if self.send_ahead is not None and route.destinations and not holds_back(verdict, route)
                         else None)
                t0 = time.perf_counter()
                reported, held = run_report_stage(output_dir, route, verdict)
                timings = replace(timings, report=reported.value if reported is not None else "ERROR",
                                  report_s=_since(t0))
                images_sent = _sent_ahead(job.id, ahead)
                timings = replace(timings, held_back=held)
        except (SctNodeError, ModelsError) as error:
            self.state.job_failed(job.id, str(error), claim=job.claims)
            logger.error("job %d failed: %s", job.id, error)
            if self.metrics is not None:
                self.metrics.job_failed()
            return
        except Exception as error:  # a bug must fail the job, not kill the worker
            logger.exception("job %d failed with an internal error", job.id)
            self.state.job_failed(job.id, f"internal error: {type(error).__name__}: {error}", claim=job.claims)
            if self.metrics is not None:
                self.metrics.job_failed()
            return
        timings = replace(timings, total_s=_since(started))
        hold_reason = ("sCT held back after a QA FAIL (route on_qa_fail = \"hold\"); "
                       + ("the report was delivered; " if timings.report != "ERROR" else
                          "its report could not be built (see the log); ")
                       + f"`sct-node release {job.id}` delivers the sCT") if held else None
        self.state.job_processed(job.id, route.destinations if route else (), timings, hold_reason=hold_reason,
                                 images_sent=images_sent, claim=job.claims)
        if self.metrics is not None:
            self.metrics.job_processed(timings)
        logger.info("job %d processed: sCT series %s, %d instances, %.1f s%s%s", job.id, written.series_instance_uid,
                    len(written.files), timings.total_s,
                    f", QA {timings.qa_verdict}" if timings.qa_verdict is not None else "",
                    ", sCT held back" if held else "")


def _in_background(name: str, function: Callable[..., _T], *args: Any) -> Future[_T]:
    """Run ``function(*args)`` in a new thread; its result (or exception) comes back through the future."""
    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except Exception as error:  # noqa: BLE001 (handed to whoever asks for the result)
            future.set_exception(error)

    threading.Thread(target=run, name=f"sct-node-{name}", daemon=True).start()
    return future


def _sent_ahead(job_id: int, ahead: Future[tuple[str, ...]] | None) -> tuple[str, ...]:
    """The destinations that accepted the sCT images sent ahead; a failure there only means the deliveries send
    everything, so it never fails the job."""
    if ahead is None:
        return ()
    try:
        return ahead.result()
    except Exception:
        logger.exception("job %d: sending the sCT ahead failed; the deliveries send everything", job_id)
        return ()


def _since(start: float) -> float:
    """Seconds of the performance counter since ``start``."""
    return time.perf_counter() - start
