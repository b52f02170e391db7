"""``expman search --show``: where each study stands, read from its storage (nothing is
written): points done, running and failed, the best so far, the objective of every point
in order and the top k."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from ...errors import UsageError
from ...queue.dialects import dialect_for
from .points import RUN_ID
from .study import open_storage, optuna_module


def summarize(queue_url: str, names: list[str], top: int) -> list[dict[str, Any]]:
    optuna = optuna_module()
    if not dialect_for(queue_url).present():  # a look makes nothing
        raise UsageError(f"no search in {dialect_for(queue_url).shown} yet; start one with: expman search")
    storage = open_storage(queue_url)
    known = set(optuna.study.get_all_study_names(storage))
    missing = [n for n in names if n not in known]
    if missing:
        hint = f"studies there: {', '.join(sorted(known)[:5])}" if known else "it holds none yet"
        raise UsageError(f"no study {missing[0]} in {queue_url} ({hint}); start it with: expman search")
    return [_summary(optuna.load_study(study_name=n, storage=storage), top) for n in names]


def _summary(study: Any, top: int) -> dict[str, Any]:
    state = optuna_module().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    points = [_point(t) for t in trials if t.state != state.WAITING]
    ok = [p for p in points if p["outcome"] == "succeeded" and p["value"] is not None]
    maximize = study.direction == optuna_module().study.StudyDirection.MAXIMIZE
    ranked = sorted(ok, key=lambda p: p["value"], reverse=maximize)
    attrs = study.user_attrs
    return {
        "study": study.study_name,
        "segment": attrs.get("segment"),
        "objective": attrs.get("objective"),
        "direction": "maximize" if maximize else "minimize",
        "points": attrs.get("points"),
        "done": sum(1 for p in points if p["outcome"] is not None),
        "running": sum(1 for p in points if p["outcome"] is None),
        "failed": sum(1 for p in points if p["outcome"] not in (None, "succeeded")),
        "best": ranked[0] if ranked else None,
        "values": [p["value"] for p in points],
        "top": ranked[:top],
    }


def _point(trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    finished = trial.state.is_finished()
    point = {
        "trial": trial.number,
        "value": trial.value if finished else None,
        "outcome": attrs.get("outcome", "failed") if finished else None,
        "run_id": attrs.get(RUN_ID),
        "params": trial.params,
    }
    point.update({k: attrs[k] for k in ("member", "generation", "parent") if k in attrs})
    return point


def render(console: Console, summaries: list[dict[str, Any]]) -> None:
    for summary in summaries:
        _render_one(console, summary)
    if any(s["segment"] is not None for s in summaries):
        console.print(_segment_table(summaries))


def _segment_table(summaries: list[dict[str, Any]]) -> Table:
    """One row per segment: its study's best point."""
    table = Table(title="best point per segment")
    for name in ("segment", "points", "failed", summaries[0]["objective"] or "value", "params", "run"):
        table.add_column(name)
    for s in summaries:
        best = s["best"] or {}
        value = f"{best['value']:.6g}" if best else "-"
        row = (s["segment"], s["done"], s["failed"], value, _params(best.get("params", {})), best.get("run_id", "-"))
        table.add_row(*(str(v) for v in row))
    return table


def _render_one(console: Console, summary: dict[str, Any]) -> None:
    segment = f" (segment {summary['segment']!r})" if summary["segment"] is not None else ""
    planned = f" of {summary['points']}" if summary["points"] else ""
    console.print(
        f"{summary['study']}{segment}: {summary['done']}{planned} points done, {summary['running']} running, "
        f"{summary['failed']} failed; {summary['objective']} ({summary['direction']})",
        markup=False,
        soft_wrap=True,
    )
    best = summary["best"]
    if best is not None:
        console.print(
            f"best {best['value']:.6g} at trial {best['trial']} (run {best['run_id']}): {_params(best['params'])}",
            markup=False,
            soft_wrap=True,
        )
    shown = ", ".join("·" if v is None else f"{v:.4g}" for v in summary["values"])
    console.print(f"per point: {shown}", markup=False, soft_wrap=True)
    if summary["top"]:
        console.print(_top_table(summary))


def _top_table(summary: dict[str, Any]) -> Table:
    keys = list(summary["top"][0]["params"])
    table = Table(title=f"top {len(summary['top'])}")
    for name in ("#", "trial", summary["objective"] or "value", *keys, "run"):
        table.add_column(name, justify="right" if name in ("#", "trial") else "left")
    for rank, point in enumerate(summary["top"], 1):
        params = [_value(point["params"].get(k)) for k in keys]
        table.add_row(str(rank), str(point["trial"]), f"{point['value']:.6g}", *params, str(point["run_id"]))
    return table


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in params.items())


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value)
