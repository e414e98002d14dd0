"""Building, checking, signing and unpacking compute packages, and every way an archive can be hostile."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from fedloom.errors import ConfigError, PackageError
from fedloom.package import (
    PackageLimits,
    build_package,
    check_package,
    generate_signing_key,
    load_public_keys,
    parse_manifest,
    unpack_package,
)

MANIFEST = b"train: python entrypoint.py train {in} {out}\nvalidate: python entrypoint.py validate {in} {out_json}\n"


def make_source(tmp_path: Path) -> Path:
    source = tmp_path / "client"
    (source / "lib").mkdir(parents=True)
    (source / "fedloom.yaml").write_bytes(MANIFEST)
    (source / "entrypoint.py").write_text("print('hello')\n")
    (source / "lib" / "util.py").write_text("X = 1\n")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    return source


def hostile_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar.gz written member by member, bypassing every check `build_package` makes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("fedloom.yaml")
        info.size = len(MANIFEST)
        archive.addfile(info, io.BytesIO(MANIFEST))
        for member, data in members:
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buffer.getvalue())
    return path


def member(name: str, data: bytes = b"x", **attributes: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, data


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_build_is_reproducible_and_skips_caches(tmp_path):
    source = make_source(tmp_path)
    first = build_package(source, tmp_path / "a.tar.gz")
    second = build_package(source, tmp_path / "b.tar.gz")
    assert first.sha256 == second.sha256
    assert first.sha256 == hashlib.sha256((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    assert (tmp_path / "a.tar.gz.sha256").read_text().split()[0] == first.sha256
    assert set(first.files) == {"fedloom.yaml", "entrypoint.py", "lib", "lib/util.py"}
    assert first.manifest.train == ("python", "entrypoint.py", "train", "{in}", "{out}")


def test_unpack_writes_only_inside_a_folder_named_after_the_digest(tmp_path):
    package = build_package(make_source(tmp_path), tmp_path / "p.tar.gz")
    into = tmp_path / "work"
    folder = unpack_package(check_package(package.path, sha256=package.sha256), into)
    assert folder == into / package.sha256[:16]
    assert (folder / "lib" / "util.py").read_text() == "X = 1\n"
    assert tree(into) == {folder.name, *(f"{folder.name}/{name}" for name in package.files)}
    assert unpack_package(package, into) == folder  # the same digest is reused


def test_digest_mismatch_is_refused(tmp_path):
    package = build_package(make_source(tmp_path), tmp_path / "p.tar.gz")
    with pytest.raises(PackageError, match="changed or damaged"):
        check_package(package.path, sha256="0" * 64)


def test_package_changed_between_check_and_unpack_is_refused(tmp_path):
    package = build_package(make_source(tmp_path), tmp_path / "p.tar.gz")
    hostile_archive(package.path, [member("extra.py")])
    with pytest.raises(PackageError, match="changed after it was checked"):
        unpack_package(package, tmp_path / "work")
    assert not (tmp_path / "work").exists() or tree(tmp_path / "work") == set()


def test_signed_package_verifies_and_tampering_or_strangers_are_refused(tmp_path):
    signer, signer_pub = generate_signing_key(tmp_path / "signer.pem")
    _, stranger_pub = generate_signing_key(tmp_path / "stranger.pem")
    assert oct(signer.stat().st_mode & 0o777) == "0o600"
    package = build_package(make_source(tmp_path), tmp_path / "p.tar.gz", signing_key=signer)
    trusted = load_public_keys([signer_pub])
    assert check_package(package.path, trusted_keys=trusted).sha256 == package.sha256

    with pytest.raises(PackageError, match="not signed by an allow-listed key"):
        check_package(package.path, trusted_keys=load_public_keys([stranger_pub]))

    # A file added after signing: the archive is rebuilt with one more member.
    with tarfile.open(package.path, "r:gz") as archive:
        members = [(m, archive.extractfile(m).read() if m.isfile() else None) for m in archive]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in [*members, member("backdoor.py", b"import os")]:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    package.path.write_bytes(buffer.getvalue())
    with pytest.raises(PackageError, match="changed after it was signed"):
        check_package(package.path, trusted_keys=trusted)

    (tmp_path / "p.tar.gz.sig").unlink()
    with pytest.raises(PackageError, match="is not signed"):
        check_package(package.path, trusted_keys=trusted)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([member("../escape.py")], "points outside"),
        ([member("lib/../../escape.py")], "points outside"),
        ([member("/tmp/fedloom-absolute-escape.py")], "absolute path"),
        ([member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")], "symbolic link"),
        ([member("hard", type=tarfile.LNKTYPE, linkname="fedloom.yaml")], "hard link"),
        ([member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)], "device or fifo"),
        ([member("fifo", type=tarfile.FIFOTYPE)], "device or fifo"),
        ([member("a\\..\\..\\escape.py")], "backslash"),
        ([member("fedloom.yaml")], "same path twice"),
    ],
)
def test_hostile_members_are_refused_before_anything_is_written(tmp_path, members, reason):
    path = hostile_archive(tmp_path / "evil.tar.gz", [(info, data) for info, data in members])
    into = tmp_path / "work"
    into.mkdir()
    before = tree(tmp_path)
    with pytest.raises(PackageError, match=reason):
        unpack_package(check_package(path), into)
    assert tree(tmp_path) == before
    assert not Path("/tmp/fedloom-absolute-escape.py").exists()


def test_limits_on_size_and_count(tmp_path):
    path = hostile_archive(
        tmp_path / "big.tar.gz", [member(f"f{i}", b"y" * 100) for i in range(20)]
    )
    with pytest.raises(PackageError, match="more than 10 members"):
        check_package(path, limits=PackageLimits(max_files=10))
    with pytest.raises(PackageError, match="unpacks to more than 1000 bytes"):
        check_package(path, limits=PackageLimits(max_bytes=1000))
    with pytest.raises(PackageError, match="over the limit"):
        check_package(path, limits=PackageLimits(max_archive_bytes=100))
    with pytest.raises(ConfigError, match="max_files"):
        PackageLimits(max_files=0)


def test_a_gzip_bomb_stops_at_the_byte_limit(tmp_path):
    # 64 MiB of zeros compresses to a few tens of KiB; the declared size trips the limit.
    path = hostile_archive(tmp_path / "bomb.tar.gz", [member("zeros", bytes(64 * 1024 * 1024))])
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(PackageError, match="unpacks to more than"):
        check_package(path, limits=PackageLimits(max_bytes=1024 * 1024))


def test_not_an_archive_and_no_manifest(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(PackageError, match=r"not a readable tar\.gz"):
        check_package(junk)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info, data = member("entrypoint.py")
        archive.addfile(info, io.BytesIO(data))
    (tmp_path / "bare.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(PackageError, match=r"no fedloom\.yaml"):
        check_package(tmp_path / "bare.tar.gz")


def test_build_refuses_links_and_a_missing_manifest(tmp_path):
    source = make_source(tmp_path)
    (source / "link.py").symlink_to(source / "entrypoint.py")
    with pytest.raises(PackageError, match="symbolic link"):
        build_package(source)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackageError, match=r"has no fedloom\.yaml"):
        build_package(empty)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"validate: python e.py {in} {out_json}", "no 'train' entry point"),
        (b"train: python e.py {in} {out}\ntrian: x", "unknown entry point 'trian'"),
        (b"train: python e.py {in}", r"must pass \{out\}"),
        (b"train: python e.py {in} {out} {secret}", r"placeholder \{secret\}"),
        (b"train: !!python/object/apply:os.system ['touch /tmp/pwned']", "not valid YAML"),
        (b"- a list", "must be a mapping"),
        (b"train: 'unterminated {in} {out}", "not valid YAML"),
        (b"train: python e.py '{in} {out}", "cannot split"),
    ],
)
def test_bad_manifests(text, reason):
    with pytest.raises(PackageError, match=reason):
        parse_manifest(text)


def test_fedn_layout_is_accepted():
    manifest = parse_manifest(
        b"entry_points:\n  train:\n    command: python entrypoint.py train {in} {out}\n"
        b"  validate:\n    command: python entrypoint.py validate {in} {out_json}\n"
    )
    assert manifest.validate == ("python", "entrypoint.py", "validate", "{in}", "{out_json}")
