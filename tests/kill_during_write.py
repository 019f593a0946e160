"""Test helper: write frames into a product and ``kill -9`` this very process at the N-th
durable change to the store (an atomic rename, a file deletion or a directory removal).

    python tests/kill_during_write.py STORE PRODUCT N INDICES [SHAPE]

(a local path, or an s3:// URL: then the changes counted are S3 PUTs, DELETEs and copies)
writes the synthetic frames (``pipelines.synthetic``) at the comma-separated INDICES and, when it gets to the end
without being killed, prints how many durable changes the write made.
"""

from __future__ import annotations

import os
import signal
import sys

from pipelines.store import ProductArchive
from pipelines.synthetic import synthetic_frames

#: S3 calls that change the bucket
S3_WRITES = {"put_object", "delete_object", "delete_objects", "copy_object", "complete_multipart_upload"}


def arm_s3(kill_at: int) -> list[int]:
    """Count every S3 call that changes the bucket; SIGKILL ourselves just before call ``kill_at``."""
    import s3fs

    count = [0]
    original = s3fs.S3FileSystem._call_s3

    async def call(self, method, *args, **kwargs):
        if method in S3_WRITES:
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = call
    return count


def arm(kill_at: int) -> list[int]:
    """Count every rename, unlink and rmdir; SIGKILL ourselves just before change ``kill_at``."""
    count = [0]

    def counted(original):
        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return call

    for name in ("replace", "rename", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))
    return count


if __name__ == "__main__":
    store, product, kill_at, indices = sys.argv[1:5]
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 48
    wanted = [int(i) for i in indices.split(",")]
    everything = synthetic_frames(n_frames=max(wanted) + 1, shape=(size, size))
    frames = [everything[i] for i in wanted]
    # armed before the write's own recovery: a kill can land in that too
    changes = (arm_s3 if store.startswith("s3://") else arm)(int(kill_at))
    ProductArchive(store, product).write(frames)
    print(changes[0])
