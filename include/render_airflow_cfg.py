#!/usr/bin/env python3
"""Render ``airflow.cfg.template`` into an ``airflow.cfg`` (stdlib only).

Usage::

    python include/render_airflow_cfg.py TEMPLATE [OUT]      # OUT defaults to $AIRFLOW_HOME/airflow.cfg

Every ``${NAME}`` in a setting is replaced by the environment variable ``NAME`` or, when that is unset
or empty, by the embedded default below (LocalExecutor, SQLite under ``$AIRFLOW_HOME``, secrets
generated once and kept in ``$AIRFLOW_HOME``); docker compose sets every value from its environment
instead (``include/compose/entrypoint.sh`` runs this in each container). ``$$`` is a literal ``$``;
comment lines are copied as they are. Substituted values have ``%`` doubled, because Airflow's config
parser treats ``%`` as interpolation. A ``${NAME}`` that has neither a value nor a default is an error
naming it and its line.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: ``$$`` (a literal ``$``), ``${NAME}``, or a ``$`` that starts neither (an error).
_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bad>\{[^}]*\}?|))")


class RenderError(Exception):
    """The template cannot be rendered; the message says why."""


def _airflow_home(env: dict[str, str]) -> Path:
    value = env.get("AIRFLOW_HOME") or "~/airflow"  # Airflow's own default
    return Path(value).expanduser().resolve()


def _stored_secret(env: dict[str, str], filename: str, make: Callable[[], str]) -> str:
    """Return the secret kept in ``$AIRFLOW_HOME/filename``, creating it (mode 0600) on first use."""
    path = _airflow_home(env) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise RenderError(f"{path} is empty: delete it to generate a new secret") from None
        return value
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(make() + "\n")
    return path.read_text(encoding="utf-8").strip()


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


#: Embedded defaults, computed only when the template uses the name and the environment lacks it.
DEFAULTS: dict[str, Callable[[dict[str, str]], str]] = {
    "DCTP_HOME": lambda env: str(REPO_ROOT),
    "AIRFLOW_HOME": lambda env: str(_airflow_home(env)),
    "AIRFLOW_EXECUTOR": lambda env: "LocalExecutor",
    "AIRFLOW_DB_URL": lambda env: f"sqlite:///{_airflow_home(env)}/airflow.db",
    "AIRFLOW_JWT_SECRET": lambda env: _stored_secret(env, ".jwt_secret", lambda: secrets.token_urlsafe(32)),
    "AIRFLOW_API_SECRET_KEY": lambda env: _stored_secret(env, ".api_secret_key", lambda: secrets.token_urlsafe(32)),
    "AIRFLOW_FERNET_KEY": lambda env: _stored_secret(env, ".fernet_key", _fernet_key),
    "AIRFLOW_BROKER_URL": lambda env: "redis://127.0.0.1:6379/0",
    "AIRFLOW_RESULT_BACKEND": lambda env: "db+" + resolve("AIRFLOW_DB_URL", env),
    "AIRFLOW_USERS": lambda env: "admin:admin",
    "AIRFLOW_ALL_ADMINS": lambda env: "False",
    "AIRFLOW_PASSWORDS_FILE": lambda env: f"{_airflow_home(env)}/simple_auth_manager_passwords.json.generated",
    "AIRFLOW_EXECUTION_API_URL": lambda env: "http://localhost:8080/execution/",
    "AIRFLOW_HOSTNAME_CALLABLE": lambda env: "airflow.utils.net.getfqdn",
    "AIRFLOW_PARALLELISM": lambda env: "8",  # a laptop: heavy model tasks, few at a time
    "AIRFLOW_WORKER_CONCURRENCY": lambda env: "4",
    "AIRFLOW_SCHEDULER_HEALTH_CHECK": lambda env: "False",
    "AIRFLOW_LOGGING_LEVEL": lambda env: "INFO",
}


def resolve(name: str, env: dict[str, str]) -> str:
    """Return the value of ``name``: the environment's (if non-empty), else the default; KeyError if neither."""
    value = env.get(name)
    if value:
        return value
    return DEFAULTS[name](env)


def render(template: str, env: dict[str, str]) -> str:
    """Return ``template`` with every placeholder substituted; RenderError lists every unresolved one."""
    cache: dict[str, str] = {}
    problems: list[str] = []
    out: list[str] = []
    for lineno, line in enumerate(template.splitlines(keepends=True), start=1):
        if line.lstrip().startswith(("#", ";")):
            out.append(line)
            continue

        def substitute(match: re.Match[str], lineno: int = lineno) -> str:
            if match.group("escaped"):
                return "$"
            name = match.group("name")
            if name is None:
                problems.append(f"line {lineno}: malformed placeholder {match.group(0)!r} (write ${{NAME}} or $$)")
                return match.group(0)
            if name not in cache:
                try:
                    value = resolve(name, env)
                except KeyError:
                    problems.append(f"line {lineno}: ${{{name}}} is not set and has no default")
                    return match.group(0)
                if "\n" in value or "\r" in value:
                    problems.append(f"line {lineno}: the value of ${{{name}}} contains a line break")
                    return match.group(0)
                cache[name] = value
            return cache[name].replace("%", "%%")

        out.append(_TOKEN.sub(substitute, line))
    if problems:
        raise RenderError("unresolved placeholders:\n  " + "\n  ".join(problems))
    return "".join(out)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python include/render_airflow_cfg.py TEMPLATE [OUT]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    template_path = Path(args[0])
    out_path = Path(args[1]) if len(args) == 2 else _airflow_home(env) / "airflow.cfg"
    try:
        text = render(template_path.read_text(encoding="utf-8"), env)
    except OSError as exc:
        print(f"render_airflow_cfg: cannot read {template_path}: {exc.strerror}", file=sys.stderr)
        return 1
    except RenderError as exc:
        print(f"render_airflow_cfg: cannot render {template_path}: {exc}", file=sys.stderr)
        return 1
    _write_private(out_path, text)
    print(f"render_airflow_cfg: wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
