"""Decide when a series is complete and what to do with it.

Nobody can know when a C-STORE sender has finished a series, so a series is
complete after a quiet period with no new instance (default 60 s, the value
Orthanc's ``StableAge`` and Mercure's ``series_complete_trigger`` use; MONAI
Deploy waits only 5 s, which splits series sent slowly by busy PACS). The
first routing rule that matches a complete series decides its model and
destinations; a series that matches none is kept for the retention time and
logged, not processed.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from sct_node.config import NodeConfig, RouteConfig, SeriesMatch
from sct_node.node.spool import Spool
from sct_node.node.state import SeriesRecord, StateStore

__all__ = ["matching_route", "route_complete_series"]

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


def route_complete_series(state: StateStore, config: NodeConfig, now: float | None = None) -> list[int]:
    """Turn every quiet series into a job or mark it unrouted. Returns the new job IDs."""
    created = []
    output_root = Spool(config.storage.spool_dir).outputs_dir
    for series in state.quiet_series(config.processing.quiet_period_s, now=now):
        if series.generation > 1:
            # A later generation is processed with every instance of the earlier ones (series_instances), but
            # its record counts only the late arrivals: criteria such as min_instances must see the whole
            # series, or one late instance would leave the re-sent series unrouted.
            whole = len(state.series_instances(series.series_uid, series.generation))
            series = dataclasses.replace(series, instances=whole)
        route = matching_route(series, config.routes)
        if route is None:
            state.mark_unrouted(series)
            logger.info("series %s (generation %d, %s, %d instances) matches no route; kept %.0f h, not processed",
                        series.series_uid, series.generation, series.modality, series.instances,
                        config.storage.unrouted_retention_h)
            continue
        job_id = state.create_job(series, route.name, route.model, output_root)
        if job_id is not None:
            created.append(job_id)
            logger.info("series %s (generation %d, %d instances) complete: job %d, route %s, model %s",
                        series.series_uid, series.generation, series.instances, job_id, route.name, route.model)
    return created
