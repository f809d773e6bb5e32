"""The release manifests that UAT and prod deploy from: the `release_manifest` block at the end of
resources/uat.yaml and prod.yaml, below a marker line. Only the promotion job writes them, and only that block.
"""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from dagster import ConfigurableResource

from aiml_assets.settings import RESOURCES_DIR, ProductRelease, Settings, SettingsError, aiml_home, parse_settings

MANIFEST_MARKER = (
    "# --- release_manifest below: written by `aiml promote` (the promote_model job) only; do not edit ---")
Manifest = dict[str, ProductRelease]


class ManifestError(SettingsError):
    """An env file whose release manifest block cannot be rewritten safely; nothing was changed."""


class ReleaseManifest(ConfigurableResource):
    """The release manifests of resources/<env>.yaml: read them, and rewrite only the block below the marker."""

    resources_dir: str = str(RESOURCES_DIR)
    seed_from: str | None = None  # where to copy the env files from on first use, when resources_dir has none
    # the products the env files stand for in place of their own: a local copy's are the local settings' products,
    # which `aiml seed-edp --products N` extends; None: each file's own
    products: list[str] | None = None

    def ready_dir(self) -> Path:
        """The env files' folder, first copied from `seed_from` if it does not exist yet (at use, never at load)."""
        folder = Path(self.resources_dir)
        if self.seed_from and not folder.is_dir():
            shutil.copytree(self.seed_from, folder)
        return folder

    def path(self, env: str) -> Path:
        return self.ready_dir() / f"{env}.yaml"

    def read(self, env: str) -> Manifest:
        return dict(parse_settings(self.path(env), expected_env=env, products=self.products).release_manifest)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serializes read-modify-write of the env files between promotions on this machine."""
        fd = os.open(self.ready_dir(), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check(self, manifests: dict[str, Manifest]) -> None:
        """Validate the files `write` would produce, changing nothing."""
        for staged in self._stage_all(manifests).values():
            staged.unlink()

    def write(self, manifests: dict[str, Manifest]) -> None:
        """Replace each env's manifest block; every new file is validated before any file is replaced."""
        for env, staged in self._stage_all(manifests).items():
            os.replace(staged, self.path(env))  # readers see the old file or the new one, never half of one

    def _stage_all(self, manifests: dict[str, Manifest]) -> dict[str, Path]:
        staged: dict[str, Path] = {}
        try:
            for env, manifest in manifests.items():
                staged[env] = self._stage(env, manifest)
        except BaseException:
            for path in staged.values():
                path.unlink(missing_ok=True)
            raise
        return staged

    def _stage(self, env: str, manifest: Manifest) -> Path:
        path = self.path(env)
        kept = {product: release for product, release in manifest.items() if release.champion or release.challenger}
        block = yaml.safe_dump(
            {"release_manifest": {p: kept[p].model_dump(exclude_none=True) for p in sorted(kept)}}, sort_keys=False)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_above_marker(path) + block.encode())
            shutil.copymode(path, staged)
            try:
                written = parse_settings(staged, expected_env=env, products=self.products).release_manifest
            except SettingsError as exc:
                raise ManifestError(f"{path}: refusing to write an invalid release manifest: {exc}") from exc
            if written != kept:
                raise ManifestError(f"{path}: the rewritten release manifest does not read back as written")
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged


def _above_marker(path: Path) -> bytes:
    """Everything up to and including the marker line, byte for byte."""
    lines = path.read_bytes().splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.rstrip(b"\r\n") == MANIFEST_MARKER.encode()]
    if len(marks) != 1:
        raise ManifestError(f"{path}: expected exactly one marker line {MANIFEST_MARKER!r} above the "
                            f"release_manifest block, found {len(marks)}")
    head = lines[: marks[0] + 1]
    if "release_manifest" in (yaml.safe_load(b"".join(head)) or {}):
        raise ManifestError(f"{path}: release_manifest must appear only below the marker line")
    if not head[-1].endswith(b"\n"):
        head[-1] += b"\n"
    return b"".join(head)


def release_manifest_for(settings: Settings) -> ReleaseManifest:
    """Whose env files a promotion rewrites. From lab, the repository's (committed through a merge request). From
    the local registry, a copy under the AIML home: local versions and sha256s must never reach the real manifests."""
    if not settings.is_local:
        return ReleaseManifest()
    return ReleaseManifest(resources_dir=str(aiml_home() / "resources"), seed_from=str(RESOURCES_DIR),
                           products=settings.products)
