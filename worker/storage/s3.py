"""Backups in S3 or an S3-compatible store (Google Cloud Storage with HMAC keys, R2, MinIO).

Uploads are multipart and stream: at most one part (8 MiB) is held in memory. A failed
backup aborts its multipart upload, so no half object and no billed leftovers remain.
"""

from __future__ import annotations

from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from worker.storage import StoredObject

PART_SIZE = 8 * 1024 * 1024


class S3Upload:
    """One multipart upload."""

    def __init__(self, client: Any, bucket: str, key: str, extra: dict[str, str]) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._id = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            self._send(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]
        return len(data)

    def _send(self, part: bytes) -> None:
        number = len(self._parts) + 1
        answer = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._id,
                                          PartNumber=number, Body=part)  # fmt: skip
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def commit(self) -> None:
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._id,
                                               MultipartUpload={"Parts": self._parts})  # fmt: skip

    def abort(self) -> None:
        self._buffer.clear()
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

    def upload(self, key: str) -> S3Upload:
        return S3Upload(self.client, self.bucket, self.prefix + key, self.extra)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **self.extra)

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
