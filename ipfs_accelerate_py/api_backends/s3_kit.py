"""S3 model storage (``s3_kit``) with the seed's method names, over ``S3Store``.

Credentials: ``metadata={"s3cfg": {"accessKey", "secretKey", "endpoint",
"bucket"}}`` as in the seed, or S3_ENDPOINT_URL / S3_ACCESS_KEY /
S3_SECRET_KEY.  Every S3 request is routed by the gateway (retried, rate
limited, circuit-broken) like a model call; large files go up in parts.
"""
from __future__ import annotations

import os
from typing import Any

from ..s3_store import S3Store
from .base import ApiBackend


class s3_kit(ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "s3"
    URL_METADATA_KEY = "s3_endpoint_url"

    def _store(self, bucket: str | None) -> S3Store:
        return S3Store(self.gateway, bucket=bucket)

    def upload_file(self, file_path: str | os.PathLike[str], bucket: str | None, key: str) -> dict[str, Any]:
        """``{"key", "etag", "size", "sha256", "parts"}``; the SHA-256 is kept with the object."""
        return self._store(bucket).upload_file(file_path, key)

    def download_file(self, bucket: str | None, key: str, file_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Downloads in ranges and checks the SHA-256 stored at upload."""
        return self._store(bucket).download_file(key, file_path)

    def list_objects(self, bucket: str | None, prefix: str | None = None) -> dict[str, Any]:
        """boto3's ``list_objects_v2`` shape: ``Contents`` of ``Key``/``Size``/``ETag``/``LastModified``."""
        listing = self._store(bucket).list(prefix or "")
        contents = [{"Key": o["key"], "Size": o["size"], "ETag": o["etag"], "LastModified": o["last_modified"]}
                    for o in listing["objects"]]
        return {"Name": bucket, "Prefix": prefix or "", "KeyCount": len(contents), "Contents": contents}

    def delete_object(self, bucket: str | None, key: str) -> dict[str, Any]:
        return self._store(bucket).delete(key)

    def head_object(self, bucket: str | None, key: str) -> dict[str, Any]:
        """``ContentLength``, ``ETag``, ``LastModified``, ``ContentType``, ``Metadata``."""
        return self._store(bucket).head(key)

    def create_presigned_url(self, bucket: str | None, key: str, expiration: int = 3600) -> str:
        """A URL that GETs the object without credentials for ``expiration`` seconds."""
        return self._store(bucket).presign(key, expires_s=expiration)
