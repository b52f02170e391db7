"""Optuna's side of a search: its study lives in the queue's own database (a SQLite file or
PostgreSQL), next to the jobs, so that one URL names all of a search's state. Only the
steering process writes it; workers never touch Optuna's tables (optuna#820: many
processes writing one SQLite file is what makes it "locked")."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, QueueError
from ...experiment.search import Dimension, SearchSpec
from ...queue.dialects import DEFAULT_PREFIX, PostgresDialect, SQLiteDialect, dialect_for

if TYPE_CHECKING:
    import optuna

STUDY_PREFIX = "search"
CREATE_TRIES = 5
# What SQLite and PostgreSQL say when two processes make Optuna's tables at once.
_CREATION_RACES = ("already exists", "UNIQUE constraint failed", "duplicate key")


def optuna_module() -> Any:
    """Optuna, imported on first use (it takes a second), quiet: the steering says what happens."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("expman search needs Optuna; pip install optuna") from None
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def storage_url(queue_url: str) -> tuple[str, dict[str, Any]]:
    """SQLAlchemy's URL of the queue's database, and the engine's options."""
    dialect = dialect_for(queue_url)
    if isinstance(dialect, SQLiteDialect):
        dialect.connect("expman search").close()  # refuses a network filesystem; makes the file
        return f"sqlite:///{dialect.path}", {"connect_args": {"timeout": dialect.busy_timeout_s}}
    assert isinstance(dialect, PostgresDialect)
    return dialect.conninfo.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "postgres://", "postgresql+psycopg://", 1
    ), {"pool_pre_ping": True}


def open_storage(queue_url: str) -> optuna.storages.RDBStorage:
    optuna = optuna_module()
    url, options = storage_url(queue_url)
    attempt = 1
    while True:
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=options)
        except Exception as exc:  # SQLAlchemy's errors: a server that is down, a file that is not a database
            text = str(exc).strip()
            if attempt == CREATE_TRIES or not any(race in text for race in _CREATION_RACES):
                first = text.splitlines()[0] if text else type(exc).__name__
                raise QueueError(
                    f"cannot open the search's storage in {dialect_for(queue_url).shown}: {first}"
                ) from None
            time.sleep(0.2 * attempt)  # another process is making Optuna's tables this moment
            attempt += 1


def study_name(commit: str, spec: SearchSpec, segment: Any, queue_url: str) -> str:
    """The same search of the same commit in the same queue is the same study, however often
    it is started; each segment is a study of its own. Queues with their own tables in one
    database (``?table=``) share Optuna's tables, so their name is part of the study's."""
    prefix = dialect_for(queue_url).prefix
    digest = spec.digest(commit) + ("" if prefix == DEFAULT_PREFIX else f"-{prefix}")
    if spec.segment_key is None:
        return f"{STUDY_PREFIX}-{commit[:8]}-{digest}"
    tag = hashlib.sha256(repr(segment).encode()).hexdigest()[:4]
    readable = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(segment))[:24]
    return f"{STUDY_PREFIX}-{commit[:8]}-{digest}-{readable}-{tag}"


def sampler(spec: SearchSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    optuna = optuna_module()
    samplers = optuna.samplers
    if spec.algorithm == "tpe":
        return samplers.TPESampler(seed=seed, constant_liar=spec.parallel > 1)
    if spec.algorithm == "grid":
        return _grid_sampler(samplers.GridSampler)({d.key: d.grid() for d in spec.space}, seed=seed)
    if spec.algorithm == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("expman.search.algorithm cmaes needs the cmaes package; pip install cmaes") from None
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return samplers.RandomSampler(seed=seed)


def _grid_sampler(base: type) -> type:
    """Optuna's grid sampler, told its results by ask-and-tell: it stops the study when the
    grid is done, which only works inside ``study.optimize`` (elsewhere it raises, and the
    last result would be lost); the steering knows the grid's size and stops by itself."""

    class AskAndTellGrid(base):  # type: ignore[misc, valid-type]
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskAndTellGrid


def suggest_all(trial: optuna.Trial, space: tuple[Dimension, ...]) -> dict[str, Any]:
    """The trial's value of each dimension, sampled now unless it has one already (a point
    asked before the steering was killed, or fixed by PBT)."""
    return {d.key: _suggest(trial, d) for d in space}


def _suggest(trial: optuna.Trial, d: Dimension) -> Any:
    if d.method == "categorical":
        return trial.suggest_categorical(d.key, list(d.categories))
    if d.method == "uniformint":
        return trial.suggest_int(d.key, int(d.low), int(d.high))
    return trial.suggest_float(d.key, d.low, d.high, log=d.method == "loguniform")


def finite(value: Any) -> float | None:
    """``value`` as a number an objective can be, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
