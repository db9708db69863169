"""The run folder as the training loop sees it: a local folder to write into, and a location to publish to.

On a path (local or a shared filesystem) the two are the same folder and publishing does nothing. On an
object-store URI, rank 0 writes into a local staging folder and :meth:`RunFolder.push` uploads what it wrote:
TensorBoard logs after each epoch, Train-local-mode checkpoints when they are saved, and at the end the exports,
metrics.json and, last of all, summary.json, whose presence marks a finished run (an object appears only when
its upload completes, so a reader never sees half a file). Ray Train's own checkpoints go to the URI through
``RunConfig(storage_filesystem=...)`` and need none of this.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rayseg import storage


class RunFolder:
    def __init__(self, location: str):
        self.location = storage.absolute(location)
        self.remote = storage.is_uri(self.location)
        self.local = Path(tempfile.mkdtemp(prefix="rayseg-run-")) if self.remote else Path(self.location)

    def has(self, name: str) -> bool:
        return storage.exists(storage.join(self.location, name))

    def location_of(self, local_path: str | Path) -> str:
        """Where a file of the staging folder is published (on a path: the file itself)."""
        if not self.remote:
            return str(local_path)
        return storage.join(self.location, Path(local_path).relative_to(self.local).as_posix())

    def pull(self, name: str) -> None:
        """Fetch ``name`` (file or folder) from the location into the staging folder, if it is there."""
        if self.remote:
            storage.download(storage.join(self.location, name), self.local / name)

    def push(self, *names: str) -> None:
        """Upload ``names`` (files or folders, in this order) from the staging folder; missing ones are skipped."""
        if not self.remote:
            return
        for name in names:
            if (self.local / name).exists():
                storage.upload(self.local / name, storage.join(self.location, name))

    def mirror(self, name: str) -> None:
        """Make the folder ``name`` at the location equal the staging folder's: upload, then delete entries the
        staging folder no longer has (old checkpoints)."""
        if not self.remote:
            return
        self.push(name)
        keep = {p.name for p in (self.local / name).iterdir()} if (self.local / name).is_dir() else set()
        for entry in storage.list_dir(storage.join(self.location, name)):
            if entry not in keep:
                storage.delete(storage.join(self.location, name, entry))

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
