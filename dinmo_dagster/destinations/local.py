"""A local folder as a file destination: the same object paths as a bucket (development, demos, benchmarks)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

from dinmo_dagster.connectors import register_file_destination
from dinmo_dagster.destinations.base import FileDestination, FileDestinationConfig

# Prefix of the temporary files LocalDestination writes before renaming; list() hides them.
_LOCAL_TMP_PREFIX = ".dinmo-tmp-"


class LocalConfig(FileDestinationConfig):
    """``{type: local, path}``."""

    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    type: Literal["local"]
    path: str
    """Folder that receives the files; relative to the project directory in a project."""


def process_umask() -> int:
    """The process's file mode creation mask, read without changing it.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting and restoring it, which
    is only racy against files created by other threads at that very instant.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class LocalDestination(FileDestination):
    """Write export files into a local folder, under the same object paths as in a bucket.

    Uploads hard-link (or, across file systems, copy) the file to a temporary name in the target
    directory and ``os.replace`` it onto the final name, so a reader never sees a half-written file.
    Files get mode ``0666`` minus the process umask (``0644`` with the usual ``022``), as any tool's
    files do, although the writer's part files are private (``0600``).
    """

    config: LocalConfig

    def _root(self) -> Path:
        return Path(self.config.path).expanduser().resolve()

    def _target(self, object_path: str) -> Path:
        return self._root() / self._check_object_path(object_path)

    def uri(self, object_path: str) -> str:
        """``file:///absolute/path``."""
        return (self._root() / object_path).as_uri() if object_path else self._root().as_uri()

    def upload(self, local_path: Path, object_path: str) -> int:
        target = self._target(object_path)
        local_path = Path(local_path)
        if not local_path.is_file():
            raise self._error(f"cannot upload '{local_path}': no such file")
        tmp: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target: os.replace is only atomic within one file system.
            tmp = target.parent / f"{_LOCAL_TMP_PREFIX}{target.name}.{uuid.uuid4().hex}"
            try:
                os.link(local_path, tmp)  # same file system: no copy of the bytes
            except OSError:
                shutil.copyfile(local_path, tmp)
            # The part file is private (0600); the delivered file gets the mode any tool's files get.
            os.chmod(tmp, 0o666 & ~process_umask())
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, target)
            tmp = None
            return target.stat().st_size
        except OSError as exc:
            raise self._error(
                f"could not write {self.uri(object_path)}: {type(exc).__name__}: {exc.strerror or exc}"
            ) from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def delete(self, object_paths: Sequence[str]) -> None:
        for object_path in object_paths:
            target = self._target(object_path)
            try:
                target.unlink(missing_ok=True)
            except IsADirectoryError:
                pass  # a "folder", not an object: nothing to delete, as in GCS
            except OSError as exc:
                raise self._error(f"could not delete {self.uri(object_path)}: {exc.strerror or exc}") from exc

    def exists(self, object_path: str) -> bool:
        return self._target(object_path).is_file()

    def list(self, prefix: str) -> list[str]:
        self._check_prefix(prefix)
        root = self._root()
        # Only walk the deepest directory the prefix names; then filter by the plain string prefix.
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not start.is_dir():
            return []
        found = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for filename in filenames:
                if filename.startswith(_LOCAL_TMP_PREFIX):
                    continue  # an upload in progress (or one that died): not an object
                rel = (Path(dirpath) / filename).relative_to(root).as_posix()
                if rel.startswith(prefix):
                    found.append(rel)
        return sorted(found)

    def read_bytes(self, object_path: str) -> bytes:
        target = self._target(object_path)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise self._error(f"object '{object_path}' not found in local folder '{self._root()}'") from None
        except OSError as exc:
            raise self._error(f"could not read {self.uri(object_path)}: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """The folder exists (it is created if needed) and a file can be created in it."""
        root = self._root()
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=_LOCAL_TMP_PREFIX):
                pass
        except OSError as exc:
            raise self._error(
                f"local folder '{root}' is not writable: {type(exc).__name__}: {exc.strerror or exc}"
            ) from exc


register_file_destination("local", LocalConfig, LocalDestination)
