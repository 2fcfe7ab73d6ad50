"""One DuckDB file, one Dagster instance.

The `clusters` dynamic partitions live in the Dagster instance and describe the clusters of one
DuckDB file, so an instance folder records the database it serves (``mergeit_database`` in the
folder) and refuses to serve another: two files sharing an instance would overwrite each other's
partitions, and the UI would show partitions of a file it does not read.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from mergeit_core import settings
from mergeit_core.settings import SettingError

PAIRING_FILE = "mergeit_database"
SETTINGS_FILE = "mergeit_settings.json"
REPO_HOME = Path("dagster_home")
# Named in the command so it loads from any folder, not only where pyproject.toml's [tool.dagster] is.
DEFINITIONS_MODULE = "mergeit_assets.definitions"
_PACKAGE_DIR = Path(__file__).resolve().parent


class InstancePairingError(SettingError):
    """The Dagster instance serves another DuckDB file."""


def instance_config_template() -> Path:
    """The project's dagster.yaml: `dagster_home/` in a checkout, packaged beside this module in a wheel."""
    for candidate in (_PACKAGE_DIR / "dagster.yaml", _PACKAGE_DIR.parent / "dagster_home" / "dagster.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("mergeit's dagster.yaml (instance config) was not found")


def served_database(home: Path) -> Path | None:
    marker = home / PAIRING_FILE
    return Path(marker.read_text(encoding="utf-8").strip()) if marker.is_file() else None


def mismatch(home: Path, database: Path) -> str | None:
    """Why ``home`` cannot serve ``database``, or None when it can."""
    served = served_database(home)
    if served is None or served == database.resolve():
        return None
    return (
        f"the Dagster instance {home} serves {served}, not {database.resolve()}: its `clusters` partitions "
        f"describe that file. Use another instance for this database (omit --dagster-home/DAGSTER_HOME to "
        f"get one beside it, or pass --dagster-home {per_database_home(database)}), or delete "
        f"{home / PAIRING_FILE} to hand the instance over to this database"
    )


def check_serves(home: Path, database: Path) -> None:
    problem = mismatch(home, database)
    if problem:
        raise InstancePairingError(problem)


def pair(home: Path, database: Path) -> None:
    """Record that ``home`` serves ``database`` (refusing if it serves another)."""
    check_serves(home, database)
    marker = home / PAIRING_FILE
    if not marker.is_file():
        home.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{database.resolve()}\n", encoding="utf-8")


def per_database_home(database: Path) -> Path:
    database = database.resolve()
    return database.with_name(f"{database.stem}.dagster_home")


def choose_home(explicit: str | Path | None, database: Path) -> Path:
    """The instance folder for a `mergeit` command on ``database``.

    An explicit folder (``--dagster-home`` or ``$DAGSTER_HOME``) must serve this database. Else
    ./dagster_home (a checkout's, so `dagster dev` there shows the run) when it serves this
    database or none yet, else a folder of the database's own beside it.
    """
    explicit = explicit or os.environ.get("DAGSTER_HOME")
    if explicit:
        home = Path(explicit).resolve()
        check_serves(home, database)
        return home
    if (REPO_HOME / "dagster.yaml").is_file() and mismatch(REPO_HOME, database) is None:
        return REPO_HOME.resolve()
    return per_database_home(database)


def prepare(home: Path, database: Path) -> None:
    """Create ``home`` with the project's instance config (telemetry off) and pair it."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.is_file():
        config.write_text(instance_config_template().read_text(encoding="utf-8"), encoding="utf-8")
    pair(home, database)


def record_settings(home: Path, environment: Mapping[str, str]) -> None:
    """Record the MERGEIT_* settings of the latest `mergeit run` on ``home`` (no secrets among
    them), so `dagster dev` and `dg` on this instance rerun its database the same way."""
    path = home / SETTINGS_FILE
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(dict(sorted(environment.items())), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def apply_recorded_settings(home: Path, environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set in ``environ`` each recorded setting it lacks, and $MERGEIT_DB to the database ``home``
    serves when unset: the environment wins, the latest `mergeit run` fills the rest. Returns
    what was set."""
    path = home / SETTINGS_FILE
    recorded = _recorded(path) if path.is_file() else {}
    served = served_database(home)
    if served is not None:
        recorded[settings.DB_VARIABLE] = str(served)
    applied = {name: value for name, value in recorded.items() if name not in environ}
    environ.update(applied)
    return applied


def _recorded(path: Path) -> dict[str, str]:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        recorded, problem = None, str(error)
    else:
        problem = "not an object of MERGEIT_* variables"
    if not isinstance(recorded, dict) or not all(
        isinstance(name, str) and name.startswith("MERGEIT_") and isinstance(value, str) for name, value in recorded.items()
    ):
        raise SettingError(f"{path}: {problem}; delete it, or run `mergeit run` again to rewrite it")
    return recorded


def dagster_dev_command(home: Path, database: Path, environment: Mapping[str, str]) -> str:
    """The shell command that opens the UI on ``home``'s runs of ``database``, from any folder,
    with ``environment`` (the MERGEIT_* settings) set."""
    assignments = {"DAGSTER_HOME": str(home), settings.DB_VARIABLE: str(database), **dict(sorted(environment.items()))}
    words = [f"{name}={shlex.quote(value)}" for name, value in assignments.items()]
    return " ".join([*words, "dagster", "dev", "-m", DEFINITIONS_MODULE])
