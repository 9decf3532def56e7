"""S3Store: a model store on the driver, over the gateway's ``s3`` endpoints.

Every method is one or more ``gateway.call("s3_*", provider="s3", ...)``
calls, so each S3 request is routed like any other: rate-limited per key,
retried with backoff, failed over to another endpoint and circuit-broken.
Large files are where this matters: ``upload_file`` sends a multipart upload
whose every part is its own routed request (a failing part is retried on its
own, not the whole file), and ``download_file`` reads ranged GETs.  Both keep
a SHA-256 of the whole object in its metadata (``x-amz-meta-sha256``) and
downloads verify it, because a multipart ETag is not a hash of the content.

Several endpoints may serve one store (two keys for one S3, or mirrored
servers): the router picks per request.  They must reach the same objects --
a multipart upload lives on the server that created it -- so endpoints of
*different* storage backends get one store each (``endpoint_id=...``).

File bytes are read and written here, on the driver, and travel to the
endpoint actors in the requests: an actor may run on another machine.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import errors
from .providers.s3 import MAX_PART_NUMBER, MAX_PART_SIZE, MIN_PART_SIZE, error_for_code

__all__ = ["S3Store", "Progress"]

#: ``progress(bytes_done, total_bytes)``, called on the calling thread after each part
Progress = Callable[[int, int], None]
_HASH_BLOCK = 1024 * 1024


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise errors.InvalidRequestError(f"{path} changed while uploading (short read at byte {offset})",
                                         provider="s3", code="file_changed")
    return data


class S3Store:
    """Put, get, list and move whole model files through the gateway's S3 endpoints.

    ``gateway`` is a ``Gateway`` (anything with ``call(op, model=None, **params)``);
    ``endpoint_id`` pins the store to one endpoint (default: any ``s3``
    endpoint the router picks); ``bucket`` overrides the endpoints' default
    bucket; ``part_size`` is the multipart part size and the single-PUT
    threshold; ``max_concurrency`` is how many parts are in flight at once.
    """

    def __init__(self, gateway: Any, *, endpoint_id: str | None = None, bucket: str | None = None,
                 part_size: int = 8 * 1024 * 1024, max_concurrency: int = 4,
                 priority: str | None = None) -> None:
        if not isinstance(part_size, int) or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise errors.ConfigError(f"part_size must be {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes (S3's multipart "
                                     f"limits), got {part_size!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise errors.ConfigError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        self.gateway = gateway
        self.endpoint_id = endpoint_id
        self.bucket = bucket
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.priority = priority

    def __repr__(self) -> str:
        return (f"S3Store(endpoint_id={self.endpoint_id!r}, bucket={self.bucket!r}, "
                f"part_size={self.part_size})")

    # -- plumbing ------------------------------------------------------------
    def _call(self, op: str, **params: Any) -> Any:
        """One routed S3 request; returns the OperationResponse."""
        params = {k: v for k, v in params.items() if v is not None}
        if self.bucket and "bucket" not in params:
            params["bucket"] = self.bucket
        if self.priority:
            params["priority"] = self.priority
        return self.gateway.call(op, provider="s3", endpoint_id=self.endpoint_id, **params)

    # -- objects -------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None,
                  metadata: Mapping[str, str] | None = None) -> dict:
        """Store ``data`` under ``key`` (one PUT); returns etag, size and sha256."""
        return self._call("s3_put", key=key, body=bytes(data), content_type=content_type,
                          metadata=dict(metadata) if metadata else None).data

    def get_bytes(self, key: str, *, range: Any = None) -> bytes:  # noqa: A002 - S3's own name
        """The object's bytes, or a ``range`` of them (``"bytes=0-99"`` or ``(0, 99)``)."""
        return self._call("s3_get", key=key, range=range).data

    def head(self, key: str) -> dict:
        """ContentLength, ETag, LastModified (ISO 8601), ContentType and Metadata."""
        return self._call("s3_head", key=key).data

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except errors.NotFoundError:
            return False
        return True

    def iter_objects(self, prefix: str = "", *, page_size: int | None = None) -> Iterator[dict]:
        """Every object under ``prefix``, one routed request per page of up to 1000."""
        token = None
        while True:
            page = self._call("s3_list", prefix=prefix, max_keys=page_size, continuation_token=token).data
            yield from page["objects"]
            token = page.get("next_token")
            if not token:
                return

    def list(self, prefix: str = "", *, delimiter: str | None = None,
             page_size: int | None = None) -> dict:
        """``{"objects": [{key, size, etag, last_modified}], "prefixes": [...]}`` for
        everything under ``prefix`` (all pages); with ``delimiter="/"`` the
        "directories" one level down are in ``prefixes``."""
        objects: list[dict] = []
        prefixes: list[str] = []
        token = None
        while True:
            page = self._call("s3_list", prefix=prefix, delimiter=delimiter, max_keys=page_size,
                              continuation_token=token).data
            objects.extend(page["objects"])
            prefixes.extend(p for p in page["prefixes"] if p not in prefixes)
            token = page.get("next_token")
            if not token:
                return {"objects": objects, "prefixes": prefixes}

    def delete(self, keys: str | Sequence[str]) -> dict:
        """Delete one key or many (batches of 1000); ``{"deleted": [...]}``.

        A key S3 refused to delete raises (the first refusal, typed) instead
        of passing silently; deleting a missing key is not an error in S3.
        """
        if isinstance(keys, str):
            result = self._call("s3_delete", key=keys).data
        else:
            result = self._call("s3_delete", keys=list(keys)).data
        failed = result.get("errors") or []
        if failed:
            first = failed[0]
            raise error_for_code(first.get("code"), f"s3 delete refused for {len(failed)} key(s); first: "
                                 f"{first.get('key')}: {first.get('code')}: {first.get('message')}",
                                 provider="s3", details={"errors": failed})
        return result

    def presign(self, key: str, *, method: str = "get", expires_s: int = 3600,
                content_type: str | None = None) -> str:
        """A URL that GETs (or PUTs) the object with no credentials, for ``expires_s``."""
        return self._call("s3_presign", key=key, http_method=method, expires_s=expires_s,
                          content_type=content_type).data

    # -- files ----------------------------------------------------------------
    def upload_file(self, path: str | os.PathLike[str], key: str, *, content_type: str | None = None,
                    metadata: Mapping[str, str] | None = None, progress: Progress | None = None) -> dict:
        """Upload a file: one PUT below ``part_size``, else a multipart upload whose
        parts are separate routed requests; an upload that fails is aborted.

        Returns ``{"key", "etag", "size", "sha256", "parts"}``.
        """
        path = Path(path)
        size = path.stat().st_size
        digest = _file_sha256(path)
        meta = {**(dict(metadata) if metadata else {}), "sha256": digest}
        if size < self.part_size:
            result = self._call("s3_put", key=key, body=path.read_bytes(), content_type=content_type,
                                metadata=meta).data
            if result.get("sha256") != digest:
                raise errors.InvalidRequestError(f"{path} changed while uploading", provider="s3",
                                                 code="file_changed")
            if progress is not None:
                progress(size, size)
            return {"key": key, "etag": result.get("etag"), "size": size, "sha256": digest, "parts": 1}
        part_size = max(self.part_size, math.ceil(size / MAX_PART_NUMBER))
        count = math.ceil(size / part_size)
        upload_id = self._call("s3_upload", action="create", key=key, content_type=content_type,
                               metadata=meta).data["upload_id"]
        try:
            etags = self._upload_parts(path, key, upload_id, size, part_size, count, progress)
            done = self._call("s3_upload", action="complete", key=key, upload_id=upload_id,
                              parts=[{"part_number": n, "etag": etags[n]} for n in sorted(etags)]).data
        except BaseException:
            self._abort(key, upload_id)
            raise
        return {"key": key, "etag": done.get("etag"), "size": size, "sha256": digest, "parts": count}

    def _upload_parts(self, path: Path, key: str, upload_id: str, size: int, part_size: int, count: int,
                      progress: Progress | None) -> dict[int, str]:
        def send(number: int) -> tuple[int, str, int]:
            offset = (number - 1) * part_size
            body = _read_at(path, offset, min(part_size, size - offset))
            part = self._call("s3_upload", action="part", key=key, upload_id=upload_id, part_number=number,
                              body=body).data
            return number, part["etag"], len(body)

        etags: dict[int, str] = {}
        done = 0
        for number, etag, length in self._run_parallel(send, range(1, count + 1)):
            etags[number] = etag
            done += length
            if progress is not None:
                progress(done, size)
        return etags

    def _abort(self, key: str, upload_id: str) -> None:
        """Best effort: a failed abort leaves an incomplete upload S3 lifecycle rules can reap,
        and must not hide the error that made us abort."""
        try:
            self._call("s3_upload", action="abort", key=key, upload_id=upload_id)
        except Exception:  # noqa: BLE001
            pass

    def download_file(self, key: str, path: str | os.PathLike[str], *, progress: Progress | None = None,
                      verify: bool = True) -> dict:
        """Download ``key`` to ``path`` by ranged GETs of ``part_size``.

        Every range is pinned to the ETag seen at the start (``If-Match``), so
        an object replaced mid-download fails instead of mixing versions.  The
        file appears at ``path`` only when complete and, when the object has a
        ``sha256`` in its metadata (and ``verify``), only when that matches.
        Returns ``{"key", "size", "etag", "sha256", "verified"}``.
        """
        path = Path(path)
        info = self.head(key)
        size = int(info.get("ContentLength") or 0)
        etag = info.get("ETag")
        expected = (info.get("Metadata") or {}).get("sha256")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "r+b") as fh:
                fh.truncate(size)
                self._download_ranges(key, fh, size, etag, progress)
            digest = _file_sha256(tmp)
            if verify and expected and digest != expected:
                raise errors.ProviderError(
                    f"s3 download of {key!r} failed its integrity check: sha256 {digest} != {expected} in the "
                    "object's metadata", provider="s3", code="sha256_mismatch", retryable=False)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return {"key": key, "size": size, "etag": etag, "sha256": digest,
                "verified": bool(verify and expected)}

    def _download_ranges(self, key: str, fh: Any, size: int, etag: str | None, progress: Progress | None) -> None:
        if size == 0:
            if progress is not None:
                progress(0, 0)
            return
        count = math.ceil(size / self.part_size)

        def fetch(index: int) -> tuple[int, bytes]:
            offset = index * self.part_size
            length = min(self.part_size, size - offset)
            data = self._call("s3_download", key=key, offset=offset, length=length, if_match=etag).data
            if len(data) != length:
                raise errors.ProviderError(f"s3 download of {key!r}: range at {offset} returned {len(data)} of "
                                           f"{length} bytes", provider="s3", retryable=False)
            return offset, data

        done = 0
        for offset, data in self._run_parallel(fetch, range(count)):
            fh.seek(offset)
            fh.write(data)
            done += len(data)
            if progress is not None:
                progress(done, size)

    def _run_parallel(self, fn: Callable[[int], Any], items: range) -> Iterator[Any]:
        """Results of ``fn`` over ``items`` with at most ``max_concurrency`` running,
        yielded on the calling thread as they finish (so callbacks run there).
        The first failure cancels what has not started and is raised."""
        if self.max_concurrency == 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        pending_items = iter(items)
        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="s3store") as pool:
            running: set[Future] = set()

            def refill() -> None:
                for item in pending_items:
                    running.add(pool.submit(fn, item))
                    if len(running) >= self.max_concurrency:
                        return

            refill()
            try:
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        running.discard(future)
                        yield future.result()
                    refill()
            finally:
                for future in running:
                    future.cancel()
