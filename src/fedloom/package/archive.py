"""Build, check and unpack compute packages: tar.gz archives of a client's code.

A package is trusted by its digest (sha256 of the archive bytes, which the
server sends with it) and, when the client is configured with allow-listed
keys, by an Ed25519 signature of that digest. Every member is checked before
anything is written: no absolute paths or ``..``, no links, devices or fifos,
at most `PackageLimits.max_files` files and `PackageLimits.max_bytes` bytes.
Unpacking writes only inside a fresh folder named after the digest, through
tarfile's ``"data"`` filter as a second guard.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedloom.errors import ConfigError, PackageError
from fedloom.package.manifest import MANIFEST_NAME, Manifest, parse_manifest

__all__ = [
    "Package",
    "PackageLimits",
    "build_package",
    "check_package",
    "generate_signing_key",
    "load_public_keys",
    "sign_package",
    "unpack_package",
]

_SKIPPED_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SIGNATURE_CONTEXT = b"fedloom-package-v1:"


@dataclass(frozen=True, slots=True)
class PackageLimits:
    """What a client accepts in a package before it writes anything.

    Args:
        max_archive_bytes: size of the tar.gz itself.
        max_bytes: total size of its files once unpacked.
        max_files: number of members (files and folders).
    """

    max_archive_bytes: int = 256 * 1024 * 1024
    max_bytes: int = 1024 * 1024 * 1024
    max_files: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_archive_bytes", "max_bytes", "max_files"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"PackageLimits.{name} must be an int >= 1, got {value!r}.", field=name
                )


@dataclass(frozen=True, slots=True)
class Package:
    """A checked package: where it is, its digest, its manifest and its member names."""

    path: Path
    sha256: str
    manifest: Manifest
    files: tuple[str, ...]


def build_package(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    signing_key: str | os.PathLike[str] | None = None,
) -> Package:
    """Pack the folder `source` (which holds ``fedloom.yaml``) into a tar.gz.

    The archive is reproducible: members in sorted order, with zeroed times and
    owners, so the same folder always gives the same digest. Next to it go
    ``<output>.sha256`` (the digest, in sha256sum's format) and, with
    `signing_key`, ``<output>.sig`` (an Ed25519 signature of the digest).

    Args:
        source: the package folder; ``__pycache__`` and VCS folders are left out.
        output: the archive to write (default: ``<source>.tar.gz`` beside the folder).
        signing_key: a PEM Ed25519 private key (see `generate_signing_key`).

    Returns:
        The package as a client will see it.

    Raises:
        PackageError: no valid manifest, or the folder holds links or special files.
    """
    root = Path(source)
    if not (root / MANIFEST_NAME).is_file():
        raise PackageError(
            f"'{root}' has no {MANIFEST_NAME}; a package folder needs one naming its entry "
            "points, e.g. `train: python entrypoint.py train {in} {out}`."
        )
    parse_manifest((root / MANIFEST_NAME).read_bytes(), source=f"'{root / MANIFEST_NAME}'")
    target = Path(output) if output is not None else root.with_name(root.name + ".tar.gz")
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in _walk(root):
            relative = path.relative_to(root).as_posix()
            info = tarfile.TarInfo(relative)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                executable = os.stat(path).st_mode & stat.S_IXUSR
                info.mode = 0o755 if executable else 0o644
                info.size = path.stat().st_size
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    target.write_bytes(data)
    Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n")
    if signing_key is not None:
        sign_package(target, signing_key)
    return check_package(target, sha256=digest)


def _walk(root: Path) -> Iterable[Path]:
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if name not in _SKIPPED_DIRS)
        here = Path(directory)
        for name in [*folders, *sorted(files)]:
            path = here / name
            if path.is_symlink():
                raise PackageError(
                    f"'{path}' is a symbolic link; packages hold regular files only. Copy "
                    "the file it points to into the package folder."
                )
            if not (path.is_dir() or path.is_file()):
                raise PackageError(f"'{path}' is not a regular file or folder.")
            if path.suffix == ".pyc":
                continue
            yield path


def sign_package(package: str | os.PathLike[str], signing_key: str | os.PathLike[str]) -> Path:
    """Write ``<package>.sig``: the Ed25519 signature of the package's sha256 digest."""
    try:
        key = serialization.load_pem_private_key(Path(signing_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PackageError(f"cannot read the signing key '{signing_key}': {exc}.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(
            f"'{signing_key}' is not an Ed25519 private key; make one with "
            "`fedloom package keygen`."
        )
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()
    target = Path(f"{package}.sig")
    target.write_text(key.sign(_SIGNATURE_CONTEXT + digest.encode()).hex() + "\n")
    return target


def generate_signing_key(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to `path` (mode 0600), its public key to ``<path>.pub``."""
    key = Ed25519PrivateKey.generate()
    private = Path(path)
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public = Path(f"{private}.pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_public_keys(paths: Sequence[str | os.PathLike[str]]) -> tuple[Ed25519PublicKey, ...]:
    """The allow-listed signers: PEM Ed25519 public keys."""
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the trusted key '{path}': {exc}.", field="trust"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(
                f"'{path}' is not an Ed25519 public key; use the .pub file that "
                "`fedloom package keygen` wrote.",
                field="trust",
            )
        keys.append(key)
    return tuple(keys)


def check_package(
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    signature: str | None = None,
    trusted_keys: Sequence[Ed25519PublicKey] = (),
    limits: PackageLimits | None = None,
) -> Package:
    """Check a package without writing anything: digest, signer, members, manifest.

    Args:
        path: the tar.gz.
        sha256: the digest it must have (hex); None checks none.
        signature: hex Ed25519 signature of the digest (default: read ``<path>.sig`` when
            `trusted_keys` are given).
        trusted_keys: allow-listed signers; when given, a valid signature from one of
            them is required.
        limits: sizes and counts accepted.

    Raises:
        PackageError: naming the first problem found.
    """
    limits = limits or PackageLimits()
    archive_path = Path(path)
    size = archive_path.stat().st_size
    if size > limits.max_archive_bytes:
        raise PackageError(
            f"package '{archive_path}' is {size} bytes, over the limit of "
            f"{limits.max_archive_bytes}. Raise PackageLimits.max_archive_bytes if it is "
            "expected."
        )
    data = archive_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.strip().lower():
        raise PackageError(
            f"package '{archive_path}' has sha256 {digest}, but {sha256} was expected: it was "
            "changed or damaged after it was published. Fetch it again from its source."
        )
    if trusted_keys:
        if signature is None:
            signature_file = Path(f"{archive_path}.sig")
            if not signature_file.is_file():
                raise PackageError(
                    f"package '{archive_path}' is not signed, and this client only runs "
                    "packages signed by an allow-listed key. Sign it with "
                    "`fedloom package build --sign KEY`."
                )
            signature = signature_file.read_text().strip()
        _verify_signature(archive_path, digest, signature, trusted_keys)
    files, manifest = _check_members(data, archive_path, limits)
    return Package(path=archive_path, sha256=digest, manifest=manifest, files=files)


def _verify_signature(
    path: Path, digest: str, signature: str, trusted_keys: Sequence[Ed25519PublicKey]
) -> None:
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise PackageError(f"the signature of '{path}' is not hex: {signature[:40]!r}.") from None
    for key in trusted_keys:
        try:
            key.verify(raw, _SIGNATURE_CONTEXT + digest.encode())
        except InvalidSignature:
            continue
        return
    raise PackageError(
        f"package '{path}' (sha256 {digest}) is not signed by an allow-listed key: either "
        "it changed after it was signed or its signer is not trusted here. Add the signer's "
        "public key with --trust only if you trust it."
    )


def _check_members(
    data: bytes, path: Path, limits: PackageLimits
) -> tuple[tuple[str, ...], Manifest]:
    names: list[str] = []
    seen: set[str] = set()
    total = 0
    manifest: Manifest | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:
                if len(names) >= limits.max_files:
                    raise PackageError(
                        f"package '{path}' has more than {limits.max_files} members; raise "
                        "PackageLimits.max_files if it is expected."
                    )
                name = _safe_name(member, path)
                if name in seen:
                    raise PackageError(
                        f"package '{path}' holds '{name}' twice (the same path twice); a later "
                        "copy would silently replace the first."
                    )
                seen.add(name)
                total += member.size
                if total > limits.max_bytes:
                    raise PackageError(
                        f"package '{path}' unpacks to more than {limits.max_bytes} bytes; "
                        "raise PackageLimits.max_bytes if it is expected."
                    )
                if name == MANIFEST_NAME and member.isfile():
                    handle = archive.extractfile(member)
                    assert handle is not None
                    manifest = parse_manifest(handle.read(), source=f"{MANIFEST_NAME} in '{path}'")
                names.append(name)
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise PackageError(
            f"'{path}' is not a readable tar.gz ({type(exc).__name__}: {exc}). Build packages "
            "with `fedloom package build DIR`."
        ) from None
    if manifest is None:
        raise PackageError(
            f"package '{path}' has no {MANIFEST_NAME} at its root; build it from a folder "
            "holding one."
        )
    return tuple(names), manifest


def _safe_name(member: tarfile.TarInfo, path: Path) -> str:
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = (
            "a symbolic link"
            if member.issym()
            else "a hard link"
            if member.islnk()
            else "a device or fifo"
        )
        raise PackageError(
            f"package '{path}' member '{name}' is {kind}; packages hold regular files and "
            "folders only."
        )
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute() or ":" in pure.parts[0]:
        raise PackageError(f"package '{path}' member '{name}' has an absolute path.")
    if ".." in pure.parts or "\\" in name:
        raise PackageError(
            f"package '{path}' member '{name}' points outside the package (it has '..' or a "
            "backslash)."
        )
    normal = pure.as_posix()
    if normal in ("", "."):
        raise PackageError(f"package '{path}' has a member with an empty name.")
    return normal


def unpack_package(package: Package, into: str | os.PathLike[str]) -> Path:
    """Unpack a checked package into ``<into>/<sha256[:16]>`` and return that folder.

    The folder is written whole under a temporary name and renamed into place,
    so a package is either fully unpacked or absent; an existing folder for the
    same digest is reused.
    """
    base = Path(into)
    base.mkdir(parents=True, exist_ok=True)
    target = base / package.sha256[:16]
    if target.is_dir():
        return target
    data = package.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != package.sha256:  # changed since it was checked
        raise PackageError(
            f"package '{package.path}' changed after it was checked (its sha256 is no longer "
            f"{package.sha256}); fetch it again."
        )
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".unpack-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            members = archive.getmembers()
            for member in members:
                _safe_name(member, package.path)
            archive.extractall(staging, members=members, filter="data")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
