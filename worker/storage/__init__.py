"""Where backups live: a local directory or an S3-compatible bucket, behind one interface."""

from __future__ import annotations

from worker.storage.model import Storage, StoredObject, Upload

__all__ = ["Storage", "StoredObject", "Upload", "open_storage"]


def open_storage(
    url: str, *, endpoint_url: str | None = None, region: str | None = None,
    sse: str | None = None, kms_key_id: str | None = None,
) -> Storage:  # fmt: skip
    """`file:///path`, a plain path, or `s3://bucket/prefix` (AWS, GCS, R2, MinIO)."""
    if url.startswith("s3://"):
        from worker.storage.s3 import S3Storage

        return S3Storage(url, endpoint_url=endpoint_url, region=region, sse=sse, kms_key_id=kms_key_id)
    from worker.storage.local import LocalStorage

    return LocalStorage(url.removeprefix("file://"))
