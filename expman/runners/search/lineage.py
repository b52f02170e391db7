"""``expman lineage``: the family tree of a population-based training study, read from the
study (nothing is written): each member's runs by generation, with the objective, where
each run started from (its parent) and the params it changed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.tree import Tree

from ...errors import UsageError
from .points import RUN_ID
from .study import open_storage, optuna_module


def nodes(queue_url: str, study_name: str) -> list[dict[str, Any]]:
    """Every member-run of the study, in trial order, with the params it changed from its parent."""
    optuna = optuna_module()
    storage = open_storage(queue_url)
    if study_name not in optuna.study.get_all_study_names(storage):
        raise UsageError(f"no study {study_name} in {queue_url}; 'expman search --show' names the studies")
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    by_run = {t.user_attrs.get(RUN_ID): t for t in trials}
    result = []
    for trial in trials:
        attrs = trial.user_attrs
        if "member" not in attrs:
            raise UsageError(f"{study_name} is not a population-based training study; see it with expman search --show")
        parent = by_run.get(attrs.get("parent"))
        before = parent.params if parent is not None else {}
        result.append(
            {
                "trial": trial.number,
                "run_id": attrs.get(RUN_ID),
                "member": attrs["member"],
                "generation": attrs["generation"],
                "origin": attrs.get("origin"),
                "parent": attrs.get("parent"),
                "parent_member": parent.user_attrs.get("member") if parent is not None else None,
                "value": trial.value if trial.state.is_finished() else None,
                "outcome": attrs.get("outcome") if trial.state.is_finished() else None,
                "params": trial.params,
                "changed": {k: v for k, v in trial.params.items() if parent is not None and before.get(k) != v},
            }
        )
    return result


def schedule(all_nodes: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """The runs ``run_id`` descends from, first generation first, ending with it: the params
    and the parent of each step of its schedule."""
    by_run = {n["run_id"]: n for n in all_nodes}
    if run_id not in by_run:
        raise UsageError(f"run {run_id} is not in its study's lineage")
    chain = [by_run[run_id]]
    while chain[-1]["parent"] in by_run and len(chain) <= len(by_run):
        chain.append(by_run[chain[-1]["parent"]])
    return list(reversed(chain))


def render(console: Console, study: str, all_nodes: list[dict[str, Any]], objective: str | None) -> None:
    tree = Tree(f"{study}{f' ({objective})' if objective else ''}")
    for member in sorted({n["member"] for n in all_nodes}):
        branch = tree.add(f"member {member}")
        for node in (n for n in all_nodes if n["member"] == member):
            branch.add(_line(node))
    console.print(tree)


def _line(node: dict[str, Any]) -> str:
    value = f"{node['value']:.6g}" if node["value"] is not None else (node["outcome"] or "running")
    source = {
        "start": "from scratch",
        "continue": f"from {node['parent']}",
        "exploit": f"exploits member {node['parent_member']} ({node['parent']})",
        "ancestor": f"from its true ancestor {node['parent']}",
        "replace": f"again, from its true ancestor {node['parent'] or '(scratch)'}",
    }.get(node["origin"], "")
    changed = " ".join(f"{k}={_short(v)}" for k, v in node["changed"].items())
    return f"gen {node['generation']}  run {node['run_id']}  {value}  {source}{'  ' + changed if changed else ''}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)
