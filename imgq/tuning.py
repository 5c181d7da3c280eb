"""This machine's own settings: the file `make tune` writes and `make run` reads.

Where it sits: beside settings.py, before it. bench/tune.py measures the candidate configurations on this
machine, in turns, and writes the winner here (`tuned.env` in the folder it runs in, the project's, or
TUNED_ENV); the launcher reads it before it imports settings (launcher.main, also under imgq-run), so every
process `make run` starts sees the tuned values as if they were in the environment. Why a file and not new
defaults: a default tuned on one CPU lost on another (issue 21's Intel and AMD runs), and a measurement on the
machine that serves is the only one that holds there.

The file is KEY=VALUE lines and # comments. Only the names in TUNABLE may appear, each once; a value set in the
environment wins over the file's, and the values are checked by settings.py like any other (the launcher names
the file in what it refuses). Only `make run` and `imgq-run` read it: the course's three shells (run_web_server.py,
run_model_server.py) and the tests run on the environment and the defaults.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

# What a tune may choose: the worker's shape. Everything else keeps its default or the environment's value.
TUNABLE = ("WORKERS", "MODEL_THREADS", "MODEL_LANES", "BATCH_SIZE")


class TunedFileError(ValueError):
    """The tuned file is there but cannot be used: the message names the file, the line and why."""


def path() -> str:
    """TUNED_ENV, or tuned.env in the folder `make run` and `make tune` run in (the project's)."""
    return os.environ.get("TUNED_ENV") or "tuned.env"


def read(file: str) -> dict[str, str]:
    """The file's settings in order; {} when there is no file. TunedFileError for a line that is not
    `NAME=value` with NAME in TUNABLE, or names one a second time."""
    try:
        with open(file, encoding="utf-8-sig") as f:  # -sig: an editor's byte-order mark is not part of line 1
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise TunedFileError(f"{file}: cannot be read ({exc})") from None
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in TUNABLE or not value or name in found:
            why = f"sets {name} a second time" if name in found else \
                f"is not NAME=value with NAME one of {', '.join(TUNABLE)}"
            raise TunedFileError(f"{file} line {number}: {line[:80]!r} {why} (delete the file, or run `make tune` "
                                 f"again)")
        found[name] = value
    return found


def apply(file: str, environ: MutableMapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Put the file's settings into `environ` where it has none of the same name. Returns (applied, kept):
    what the file set, and what the environment already set (name → the environment's value)."""
    applied: dict[str, str] = {}
    kept: dict[str, str] = {}
    for name, value in read(file).items():
        if name in environ:
            kept[name] = environ[name]
        else:
            environ[name] = applied[name] = value
    return applied, kept


_MODEL_LINE = "Measured for MODEL={}: run `make tune` again for another model."


def measured_model(file: str) -> str | None:
    """The MODEL the file was measured for (its comment, as write() put it); None when it does not say."""
    head, tail = _MODEL_LINE.split("{}")
    try:
        with open(file, encoding="utf-8-sig") as f:
            for line in f:
                line = line.strip().removeprefix("#").strip()
                if line.startswith(head) and line.endswith(tail) and len(line) > len(head) + len(tail):
                    return line[len(head):-len(tail)]
    except (OSError, UnicodeDecodeError):
        pass
    return None


def unwritable(file: str) -> str | None:
    """Why the tuned file cannot be written at `file` (not a regular file, or its folder is not writable), or
    None. bench/tune.py asks before it measures, write() again before it writes."""
    if os.path.lexists(file) and not os.path.isfile(file):
        return "not a regular file"
    if not os.access(os.path.dirname(os.path.abspath(file)), os.W_OK):
        return "its folder is not writable"
    return None


def write(file: str, chosen: Mapping[str, object], comments: list[str], model: str | None = None) -> None:
    """Write the file: each comment line as `# line`, the MODEL it was measured for, then the chosen settings.
    Written aside and renamed, so a `make run` starting meanwhile reads the old file or the new one, never half
    of one."""
    for name, value in chosen.items():
        if name not in TUNABLE:
            raise ValueError(f"{name} is not tunable ({', '.join(TUNABLE)})")
        if not str(value) or str(value).split() != [str(value)]:
            raise ValueError(f"{name}={value!r}: a value is one word")
    why = unwritable(file)
    if why:
        raise ValueError(f"{file}: {why}")
    # A comment is one line however it was given: read() splits lines wherever str.splitlines does.
    if model is not None:
        comments = [*comments, _MODEL_LINE.format(model)]
    text = "".join(f"# {' '.join(c.splitlines())}\n" if c else "#\n" for c in comments)
    text += "".join(f"{name}={value}\n" for name, value in chosen.items())
    partial = f"{file}.partial-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, file)
