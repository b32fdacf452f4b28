#!/usr/bin/env python3
"""Container entrypoint: build a `facekeys <command>` line from a config file, the environment and
mounted secrets, then exec it (the service becomes PID 1's only child-less process, so SIGTERM from
`docker stop` / Kubernetes reaches it directly and it shuts down gracefully).

    facekeys-entrypoint serve [extra flags...]
    facekeys-entrypoint recover-serve [extra flags...]
    facekeys-entrypoint index [args...]
    facekeys-entrypoint <anything else ...>     -> exec'd as is (e.g. `bash`, `facekeys-backup ...`)

Where settings come from, later ones winning:
  1. the config file: $FACEKEYS_CONFIG, else /etc/facekeys/<command>.toml if it exists. Flat TOML, one
     key per command-line flag: `map_size = "64G"` -> `--map-size 64G`; `true` -> `--flag`; `false` -> left out.
  2. the environment: FACEKEYS_<FLAG> -> --<flag>, e.g. FACEKEYS_MAP_SIZE=128G -> --map-size 128G.
     (FACEKEYS_CONFIG, FACEKEYS_PROBE_* (the health probe's) and FACEKEYS_ENTRYPOINT_* are not flags, so
     FACEKEYS_HEALTH_PORT=50060 is `--health-port 50060`; Kubernetes service-link variables such as
     FACEKEYS_KEYSTORE_SERVICE_HOST are ignored.)
  3. secrets from mounted files: FACEKEYS_<FLAG>_FILE=/run/secrets/x (or `<flag>_file = "..."` in the
     file). If the command has a `--<flag>-file` option the path is passed through (the secret never
     appears in the process list); otherwise the file's content, stripped, becomes --<flag>. Keys that
     name a `--*-file` option themselves (credentials_file, audit_key_file, transform_secret_file,
     master_key_file, grant_key_file, keystore_token_file) are therefore paths, checked to exist at start.
     For delegated commands (recover-serve, index) the parser is not consulted: every `*_file` is a path.
  4. flags given after the command on the container's command line.
For `serve` every key is checked against the real `facekeys serve` parser, so a typo fails at start
instead of being ignored. FACEKEYS_ENTRYPOINT_DRY_RUN=1 prints the final argv as JSON and exits.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Mapping, Optional

PREFIX = "FACEKEYS_"
RESERVED = ("FACEKEYS_CONFIG", "FACEKEYS_PROBE_", "FACEKEYS_ENTRYPOINT_")
# Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT=tcp://..., <SERVICE>_PORT_50051_TCP_* for every
# Service in the namespace; a Service named facekeys-* would otherwise turn into bogus flags. (The manifests
# also set enableServiceLinks: false.)
SERVICE_LINK = re.compile(r"^FACEKEYS_[A-Z0-9_]*?(_SERVICE_HOST|_SERVICE_PORT(_[A-Z0-9_]+)?|_PORT_\d+_(TCP|UDP|SCTP)(_[A-Z]+)?)$")
SERVICES = ("serve", "recover-serve", "index")
CONFIG_DIR = Path("/etc/facekeys")


class ConfigError(Exception):
    pass


def config_path(command: str, env: Mapping[str, str]) -> Optional[Path]:
    if env.get("FACEKEYS_CONFIG"):
        p = Path(env["FACEKEYS_CONFIG"])
        if not p.is_file():
            raise ConfigError(f"FACEKEYS_CONFIG={p} is not a file")
        return p
    p = CONFIG_DIR / f"{command}.toml"
    return p if p.is_file() else None


def _flag(key: str) -> str:
    return "--" + key.strip().lower().replace("_", "-")


def _value(v) -> Optional[str]:
    if isinstance(v, bool):
        return "" if v else None  # "" = a bare switch
    if isinstance(v, (int, float, str)):
        return str(v)
    raise ConfigError(f"unsupported value {v!r} (use a string, number or boolean)")


def settings(command: str, env: Mapping[str, str]) -> dict[str, Optional[str]]:
    """flag -> value ("" for a switch, None for an explicit false) from file, env and secret files."""
    out: dict[str, Optional[str]] = {}
    secrets: dict[str, str] = {}
    path = config_path(command, env)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        for k, v in data.items():
            if isinstance(v, dict):
                raise ConfigError(f"{path}: tables are not supported ([{k}]); use flat keys")
            if k.endswith("_file"):
                secrets[_flag(k[:-5])] = str(v)
            else:
                out[_flag(k)] = _value(v)
    for name, v in sorted(env.items()):
        if not name.startswith(PREFIX) or name.startswith(RESERVED):
            continue
        if SERVICE_LINK.match(name) or v.startswith(("tcp://", "udp://", "sctp://")):
            continue  # a Kubernetes service link, not a setting
        key = name[len(PREFIX):]
        if key.endswith("_FILE"):
            secrets[_flag(key[:-5])] = v
        else:
            out[_flag(key)] = "" if v.lower() == "true" else None if v.lower() == "false" else v
    for flag, file in secrets.items():
        out.pop(flag, None)
        out[flag + "-file"] = "\0file:" + file  # resolved in build_argv, once the parser is known
    return out


def _known_flags(command: str) -> Optional[set[str]]:
    if command != "serve":
        return None  # delegated commands parse their own flags
    from facekeys.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return {s for a in sub._actions for s in a.option_strings}


def build_argv(command: str, extra: list[str], env: Mapping[str, str]) -> list[str]:
    known = _known_flags(command)
    argv = [command]
    for flag, v in settings(command, env).items():
        if v is not None and v.startswith("\0file:"):
            file = v[len("\0file:"):]
            if known is not None and flag not in known:  # no --x-file option: pass the content
                try:
                    content = Path(file).read_text().strip()
                except OSError as e:
                    raise ConfigError(f"cannot read secret file for {flag[:-5]}: {e}") from None
                flag, v = flag[:-5], content
            else:
                if not Path(file).is_file():
                    raise ConfigError(f"secret file for {flag} does not exist: {file}")
                v = file
        if known is not None and flag not in known:
            raise ConfigError(f"`facekeys {command}` has no option {flag} (from the config file or environment)")
        if v is None:
            continue
        argv += [flag] if v == "" else [flag, v]
    return argv + extra


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv) or ["serve"]
    command, extra = args[0], args[1:]
    if command not in SERVICES:
        os.execvp(command, args)  # not a facekeys service: run as is
    try:
        final = build_argv(command, extra, os.environ)
    except ConfigError as e:
        print(f"facekeys-entrypoint: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("FACEKEYS_ENTRYPOINT_DRY_RUN") == "1":
        print(json.dumps(final))
        return 0
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "facekeys.cli", *final])
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
