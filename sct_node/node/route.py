"""Decide when a series is complete and what to do with it.

Nobody can know for sure when a C-STORE sender has finished a series. Three rules say it, chosen per
route (``complete_on``), the first that fires wins and is logged and kept with the job:

* **expected count**: the instances the data announce have arrived (Images in Acquisition (0020,1002)
  of classic MR images, one instance or the concatenation's total for an Enhanced MR), when every
  instance announces the same count;
* **association**: every instance of the series generation came on one association, which was released
  normally ``association_grace_s`` ago (default 2 s) and no instance came after; this is how auto-routing
  PACSs send a stable series (Orthanc's OnStableSeries, Mercure, dcm4chee forwarding rules). A second
  association that touches the series (a sender splitting it) turns the rule off for that generation;
* **quiet period**: no new instance for ``processing.quiet_period_s`` (default 60 s, the value Orthanc's
  ``StableAge`` and Mercure's ``series_complete_trigger`` use; MONAI Deploy waits only 5 s, which splits
  series sent slowly by busy PACS). Always on: the fallback when the others cannot decide.

The first routing rule that matches a series decides its model, destinations and completion rules; a
series that matches none is kept for the retention time and logged after its quiet period, not processed.
Instances that arrive after their series was complete open a new generation (sct_node.node.state).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time

from sct_node.config import NodeConfig, RouteConfig, SeriesMatch
from sct_node.node.spool import Spool
from sct_node.node.state import SeriesRecord, StateStore

__all__ = ["completion", "matching_route", "route_complete_series"]

logger = logging.getLogger(__name__)


def matching_route(series: SeriesRecord, routes: tuple[RouteConfig, ...]) -> RouteConfig | None:
    """The first route whose every criterion matches the series, or None."""
    for route in routes:
        if _matches(series, route.match):
            return route
    return None


def _matches(series: SeriesRecord, match: SeriesMatch) -> bool:
    if match.modality and (series.modality or "") not in match.modality:
        return False
    if series.instances < match.min_instances:
        return False
    for pattern, value in ((match.series_description, series.description), (match.image_type, series.image_type),
                           (match.body_part, series.body_part), (match.calling_ae, series.calling_ae)):
        if pattern is not None and not re.search(pattern, value or ""):
            return False
    return True


def completion(series: SeriesRecord, route: RouteConfig | None, quiet_period_s: float, now: float) -> str | None:
    """Which completion rule makes a receiving series generation complete now, in words; None: not yet.

    ``series.instances`` must count the whole series (every generation), as :func:`route_complete_series`
    passes it; the expected count is the whole series'.
    """
    rules = route.complete_on if route is not None else ()
    expected = series.expected_instances
    if "expected_count" in rules and expected is not None and expected > 0 and series.instances == expected:
        return f"expected count: the {expected} instances the series announces have arrived"
    if ("association" in rules and route is not None and series.single_association and series.released_at is not None
            and series.last_received_at <= series.released_at
            and now >= series.released_at + route.association_grace_s):
        return (f"association: every instance came on one association, released normally "
                f"{now - series.released_at:.1f} s ago")
    if series.last_received_at <= now - quiet_period_s:
        return f"quiet period: no instance for {quiet_period_s:g} s"
    return None


def route_complete_series(state: StateStore, config: NodeConfig, now: float | None = None) -> list[int]:
    """Turn every complete series into a job, or mark it unrouted after its quiet period. Returns the new job IDs."""
    now = time.time() if now is None else now
    created = []
    output_root = Spool(config.storage.spool_dir).outputs_dir
    for series in state.receiving_series():
        whole = series
        if series.generation > 1:
            # A later generation is processed with every instance of the earlier ones (series_instances), but
            # its record counts only the late arrivals: criteria such as min_instances, and the expected count,
            # must see the whole series, or one late instance would leave the re-sent series unrouted.
            whole = dataclasses.replace(
                series, instances=state.series_instance_count(series.series_uid, series.generation))
        route = matching_route(whole, config.routes)
        rule = completion(whole, route, config.processing.quiet_period_s, now)
        if rule is None:
            continue
        if route is None:
            state.mark_unrouted(series)
            logger.info("series %s (generation %d, %s, %d instances) matches no route; kept %.0f h, not processed",
                        series.series_uid, series.generation, series.modality, whole.instances,
                        config.storage.unrouted_retention_h)
            continue
        job_id = state.create_job(series, route.name, route.model, output_root, completed_by=rule)
        if job_id is not None:
            created.append(job_id)
            logger.info("series %s (generation %d, %d instances) complete: job %d, route %s, model %s; by %s",
                        series.series_uid, series.generation, whole.instances, job_id, route.name, route.model,
                        rule)
    return created
