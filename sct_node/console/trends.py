"""sCT quality over time, per route and model: what the console's trends page shows.

The numbers come from each job's record (:class:`~sct_node.node.state.JobTimings`: the QA verdict, the
gamma pass rate, the body's soft-tissue and bone mean HU and bone share, whether the sCT was held back),
so they outlive the jobs' folders. A drift after a scanner upgrade or a protocol change shows as a step in
these series: more WARN/FAIL, a lower gamma pass rate, a bone mean HU that moves.
"""

from __future__ import annotations

import datetime as _dt
import io
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sct_node.node.state import Job

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["Group", "draw_trends", "groups_of"]

VERDICTS = ("PASS", "WARN", "FAIL", "ERROR")
_COLOURS = {"PASS": "#2e7d32", "WARN": "#f0a202", "FAIL": "#b00020", "ERROR": "#6d6d6d"}


@dataclass(frozen=True)
class Group:
    """The QA'd jobs of one route and model, oldest first."""

    route: str
    model: str
    jobs: tuple[Job, ...]

    @property
    def key(self) -> str:
        return f"{self.route}/{self.model}"

    def summary(self) -> dict[str, str | int]:
        verdicts = Counter(j.timings.qa_verdict for j in self.jobs if j.timings is not None)
        held = sum(1 for j in self.jobs if j.timings is not None and j.timings.held_back)

        def median(name: str) -> str:
            values = [getattr(j.timings, name) for j in self.jobs
                      if j.timings is not None and getattr(j.timings, name) is not None]
            return f"{statistics.median(values):.1f}" if values else "-"

        return {"route": self.route, "model": self.model, "jobs": len(self.jobs),
                **{v: verdicts.get(v, 0) for v in VERDICTS},
                "hold_rate": f"{100.0 * held / len(self.jobs):.0f} %" if self.jobs else "-",
                "gamma": median("gamma_pass_percent"), "soft": median("soft_tissue_mean_hu"),
                "bone": median("bone_mean_hu")}


def groups_of(jobs: list[Job]) -> list[Group]:
    """The jobs with a QA verdict, by (route, model), each oldest first."""
    grouped: dict[tuple[str, str], list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.created_at):
        if job.timings is not None and job.timings.qa_verdict is not None:
            grouped.setdefault((job.route, job.model), []).append(job)
    return [Group(route, model, tuple(found)) for (route, model), found in sorted(grouped.items())]


def draw_trends(group: Group) -> bytes:
    """A PNG of the group's series over time: verdicts per day, gamma pass rate, tissue mean HU, hold rate."""
    from matplotlib.figure import Figure

    jobs = group.jobs
    when = [_dt.datetime.fromtimestamp(j.created_at) for j in jobs]
    figure = Figure(figsize=(10, 9.5), layout="constrained")
    axes = figure.subplots(4, 1, sharex=True)
    figure.suptitle(f"Route {group.route}, model {group.model}: {len(jobs)} QA'd job(s)")

    days = sorted({w.date() for w in when})
    bottom = [0] * len(days)
    for verdict in VERDICTS:
        counts = [sum(1 for j, w in zip(jobs, when, strict=True) if w.date() == day and j.timings is not None
                      and j.timings.qa_verdict == verdict) for day in days]
        stamps = [_dt.datetime.combine(day, _dt.time(12)) for day in days]
        axes[0].bar(stamps, counts, bottom=bottom, width=0.8, color=_COLOURS[verdict], label=verdict)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    axes[0].set_ylabel("jobs per day")
    axes[0].legend(loc="upper left", ncols=4, fontsize=8)

    def series(axis: Axes, name: str, label: str, colour: str) -> None:
        points = [(w, getattr(j.timings, name)) for j, w in zip(jobs, when, strict=True)
                  if j.timings is not None and getattr(j.timings, name) is not None]
        if points:
            axis.plot(np.asarray([p[0] for p in points], dtype="datetime64[s]"), [p[1] for p in points], "o-",
                      markersize=3, color=colour, label=label)

    series(axes[1], "gamma_pass_percent", "gamma 2%/2 mm pass rate", "#1d4e89")
    axes[1].set_ylabel("gamma pass (%)")
    series(axes[2], "soft_tissue_mean_hu", "soft tissue mean", "#8a5a00")
    series(axes[2], "bone_mean_hu", "bone mean", "#555555")
    axes[2].set_ylabel("mean HU in the body")
    axes[2].legend(loc="upper left", fontsize=8)
    held = [sum(1 for j, w in zip(jobs, when, strict=True) if w.date() == day and j.timings is not None
                and j.timings.held_back) / max(1, sum(1 for w in when if w.date() == day)) * 100 for day in days]
    axes[3].plot(np.asarray([_dt.datetime.combine(day, _dt.time(12)) for day in days], dtype="datetime64[s]"), held,
                 "s-", color="#b00020")
    axes[3].set_ylabel("held back (% of the day's jobs)")
    axes[3].set_ylim(-5, 105)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.autofmt_xdate()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=80)
    return image.getvalue()
