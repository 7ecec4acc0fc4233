"""Backups in S3 or an S3-compatible store (Google Cloud Storage with HMAC keys, R2, MinIO).

Uploads are multipart and stream: parts are sent by a pool of IN_FLIGHT threads while the next
fills, so at most (IN_FLIGHT + 1) parts are in memory (24 MiB with the default 8 MiB parts).
Part sizes follow `part_size()`, so 10,000 parts always cover the archive. A failed backup
aborts its multipart upload, so no half object and no billed leftovers remain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from worker.storage.model import StoredObject

MIB = 1024 * 1024
MIN_PART = 8 * MIB
MAX_PART = 5 * 1024 * MIB
MAX_PARTS = 10_000
IN_FLIGHT = 2
"""Parts uploading at once while the next one fills: memory is (IN_FLIGHT + 1) x part size."""
ESTIMATE_AFTER = 64
"""Parts (512 MiB) after which an upload asks for the archive's size estimate: small ones never pay for it."""


def failure(exc: BaseException) -> str | None:
    """One sentence for a botocore error that reached a command (a missing bucket, refused credentials, no
    endpoint), or None for any other error."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code == "NoSuchBucket":
            bucket = f" {error['BucketName']!r}" if error.get("BucketName") else ""
            return f"S3: the bucket{bucket} does not exist (check the storage: URL and AWS_ENDPOINT_URL_S3)"
        return f"S3: {exc.operation_name} failed: {code}" + (f": {message}" if message else "")
    if isinstance(exc, BotoCoreError):
        return f"S3: {exc}"
    return None


def part_size(expected: int | None, parts_done: int, bytes_done: int) -> int:
    """The next part's size: S3 allows 10,000 parts of 5 MiB to 5 GiB, so parts must grow with the archive.

    With an estimate (the database's own dataSize, asked for once ESTIMATE_AFTER parts are sent),
    parts are sized for 1.25 times it in the parts left. Past the estimate, or without one, they
    are sized for twice what is already written: geometric growth that reaches S3's 5 TiB object
    limit within 10,000 parts (bench/backup.py prints the exact figure) while a small archive
    keeps 8 MiB parts.
    """
    remaining = max(MAX_PARTS - parts_done - 1, 1)
    left = expected * 1.25 - bytes_done if expected and bytes_done <= expected else 2 * bytes_done
    size = -(-int(max(left, 0)) // remaining)  # ceiling division
    size = -(-size // MIB) * MIB
    return min(max(MIN_PART, size), MAX_PART)


class S3Upload:
    """One multipart upload, its parts sent from a small pool while the next part fills."""

    def __init__(self, client: Any, bucket: str, key: str, extra: dict[str, str],
                 estimate: Callable[[], int | None] | None = None) -> None:  # fmt: skip
        self._client, self._bucket, self._key = client, bucket, key
        self._id = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        self._estimate = estimate
        self._expected: int | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._sent = 0
        self._next_size = MIN_PART
        self._parts: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="s3-part")
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._pending: list[Future[None]] = []
        self._error: BaseException | None = None
        self.part_sizes: list[int] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        while self._buffered >= self._next_size:
            joined = b"".join(self._chunks)
            part, rest = joined[: self._next_size], joined[self._next_size :]
            self._chunks, self._buffered = ([rest] if rest else []), len(rest)
            self._submit(part)
        return len(data)

    def _submit(self, part: bytes) -> None:
        if self._error is not None:
            raise self._error
        number = len(self.part_sizes) + 1
        if number > MAX_PARTS:
            raise RuntimeError(f"{self._key}: over S3's {MAX_PARTS} parts")
        self.part_sizes.append(len(part))
        self._sent += len(part)
        if number == ESTIMATE_AFTER and self._estimate is not None:
            self._expected = self._estimate()  # a large archive: from now on, parts sized for the whole
        self._next_size = part_size(self._expected, number, self._sent)
        self._slots.acquire()  # at most IN_FLIGHT parts in memory besides the one filling
        future = self._pool.submit(self._send, number, part)
        future.add_done_callback(lambda _f: self._slots.release())
        self._pending.append(future)

    def _send(self, number: int, part: bytes) -> None:
        try:
            answer = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._id,
                                              PartNumber=number, Body=part)  # fmt: skip
        except BaseException as exc:
            self._error = self._error or exc
            raise
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def _drain(self) -> None:
        for future in self._pending:
            future.exception()  # wait; the first error is kept in self._error
        self._pending.clear()
        if self._error is not None:
            raise self._error

    def commit(self) -> None:
        if self._chunks or not self.part_sizes:
            self._submit(b"".join(self._chunks))
            self._chunks, self._buffered = [], 0
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)
        parts = sorted(self._parts, key=lambda p: p["PartNumber"])
        self._client.complete_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._id,
                                               MultipartUpload={"Parts": parts})  # fmt: skip

    def abort(self) -> None:
        self._chunks.clear()
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)  # parts still sending finish first, so the abort removes them all
        self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._id)


class S3Storage:
    """A bucket and key prefix; credentials come from the standard AWS variables."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 sse: str | None = None, kms_key_id: str | None = None) -> None:  # fmt: skip
        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        self.display = f"s3://{self.bucket}/{self.prefix}"
        config = Config(retries={"max_attempts": 5, "mode": "standard"})
        if endpoint_url:
            # Third-party endpoints (GCS, some MinIO/R2) reject boto3's new default checksums.
            config = config.merge(Config(request_checksum_calculation="when_required",
                                         response_checksum_validation="when_required"))  # fmt: skip
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.extra: dict[str, str] = {}
        if sse:
            self.extra["ServerSideEncryption"] = sse
        if kms_key_id:
            self.extra["SSEKMSKeyId"] = kms_key_id

    def upload(self, key: str, estimate: Callable[[], int | None] | None = None) -> S3Upload:
        return S3Upload(self.client, self.bucket, self.prefix + key, self.extra, estimate)

    def put(self, key: str, data: bytes, **params: str) -> None:
        """Write one object; `params` are put_object's own (ContentType, ACL, ...)."""
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **self.extra, **params)

    def link(self, key: str, valid: timedelta) -> str:
        """A presigned GET link to the object, valid this long."""
        params = {"Bucket": self.bucket, "Key": self.prefix + key}
        url: str = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=int(valid.total_seconds()))
        return url

    def open(self, key: str) -> BinaryIO:
        return cast(BinaryIO, self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"])

    def objects(self, prefix: str = "") -> list[StoredObject]:
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + prefix):  # fmt: skip
            for item in page.get("Contents", []):
                found.append(StoredObject(item["Key"][len(self.prefix) :], item["Size"], item["LastModified"]))
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def abort_abandoned(self, prefix: str) -> list[str]:
        """Abort multipart uploads left under `prefix` by a run that died; S3 keeps (and bills) them."""
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix + prefix)
        aborted = []
        for upload in answer.get("Uploads", []):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted.append(upload["Key"][len(self.prefix) :])
        return aborted

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads never completed or aborted (should be none)."""
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return [u["Key"] for u in answer.get("Uploads", [])]
