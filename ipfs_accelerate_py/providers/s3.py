"""S3-compatible object storage as a model store (PROTOCOLS.md section 10), over boto3.

Not HTTP we frame ourselves: SigV4 signing, XML parsing and checksums are
boto3's job, so this provider overrides ``execute`` and runs each boto3 call
in a worker thread (``asyncio.to_thread``) of the endpoint actor, whose event
loop keeps serving other requests meanwhile.  botocore's own retries are off
(one attempt): the router already retries, backs off, fails over between
keys and circuit-breaks, and a second retry layer below it would multiply
attempts and hide failures from the circuit breaker.

Every operation is one S3 request, so each is routed, limited and retried on
its own.  That is why multipart upload is exposed as primitives
(``s3_upload`` with ``action`` create / part / complete / abort): every part
is a separate routed request with its own retries; ``ipfs_accelerate_py.s3_store``
strings them together on the driver.

Endpoint settings (``EndpointConfig``): ``base_url`` is the S3 endpoint URL
(None = AWS); ``options``: ``region`` (us-east-1), ``bucket`` (the default
bucket), ``access_key_id``, ``secret_access_key`` (a ``config.Secret``; the
endpoint's ``api_key`` may carry it instead), ``session_token``,
``addressing_style`` (``path`` by default for non-AWS URLs, which need no
wildcard DNS), ``verify`` (TLS verification or a CA bundle path).  Without
credentials boto3's default chain (environment, ~/.aws, instance role) applies.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import re
import threading
from typing import Any, Callable, ClassVar, Mapping
from urllib.parse import urlparse

from .. import errors
from ..types import OperationRequest, OperationResponse
from .base import Provider, Request, Result, register
from .openai_compat import op_params

__all__ = ["S3Provider", "error_for_code", "MAX_PRESIGN_S", "MAX_DELETE_BATCH", "MIN_PART_SIZE",
           "MAX_PART_NUMBER", "parse_range", "sha256_hex"]

#: SigV4 presigned URLs live at most seven days
MAX_PRESIGN_S = 604_800
#: delete_objects takes at most this many keys per call
MAX_DELETE_BATCH = 1000
#: every multipart part except the last must be at least this large (else EntityTooSmall)
MIN_PART_SIZE = 5 * 1024 * 1024
#: largest single part (and single PUT)
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PART_NUMBER = 10_000
#: S3 object keys are at most 1024 bytes of UTF-8
MAX_KEY_BYTES = 1024
DEFAULT_REGION = "us-east-1"
_ADDRESSING_STYLES = ("path", "virtual", "auto")
_UPLOAD_ACTIONS = ("create", "part", "complete", "abort")
_INSTALL_HINT = 'the s3 provider needs boto3: pip install "ipfs-accelerate-py[s3]" (or pip install boto3)'

# -- error mapping: S3 error code -> (error class, retryable) ------------------------------
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NoSuchVersion", "NotFound", "404"})
_AUTH_CODES = frozenset({"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken",
                         "InvalidToken", "TokenRefreshRequired", "InvalidSecurity", "AllAccessDisabled",
                         "403"})
_THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                             "TooManyRequests", "RequestThrottled", "ServiceQuotaExceeded"})
_TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeTooSkewed"})
#: conflicts that a later attempt can get past (a concurrent operation on the same bucket)
_RETRYABLE_CONFLICT_CODES = frozenset({"OperationAborted"})


def error_for_code(code: str | None, message: str, *, status: int | None = None,
                   retry_after: float | None = None, **kw: Any) -> errors.GatewayError:
    """The typed error for an S3 error ``code`` and HTTP ``status``.

    The code decides when it is known (HEAD answers carry no body, so their
    code is just the status as a string); otherwise the status does.  Used by
    the provider and by ``S3Store`` for per-key errors of a batch delete.
    """
    code = code or (str(status) if status else None)
    text = message
    kw = {**kw, "code": code, "retry_after": retry_after}
    if code in _NOT_FOUND_CODES or status == 404:
        return errors.NotFoundError(text, status=404, **kw)
    if code in _AUTH_CODES or status in (401, 403):
        return errors.AuthenticationError(text, status=status or 403, **kw)
    if code in _THROTTLE_CODES or status == 429:
        return errors.RateLimitError(text, status=status or 503, retryable=True, **kw)
    if code in _TIMEOUT_CODES or status == 408:
        return errors.TimeoutError(text, status=status or 400, retryable=True, **kw)
    if code in _RETRYABLE_CONFLICT_CODES:
        return errors.ProviderError(text, status=status or 409, retryable=True, **kw)
    if status == 501 or code == "NotImplemented":
        return errors.UnsupportedOperationError(text, status=501, **kw)
    if status == 503:
        return errors.ProviderOverloadedError(text, status=503, retryable=True, **kw)
    if status is not None and status >= 500:
        return errors.ProviderError(text, status=status, retryable=True, **kw)
    return errors.InvalidRequestError(text, status=status or 400, **kw)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_range(value: Any) -> str:
    """An HTTP byte range for GetObject: ``"bytes=a-b"`` as is, or ``(start, end)``
    inclusive, or ``(start, None)`` for "to the end"."""
    if isinstance(value, str):
        if not re.fullmatch(r"bytes=(\d+-\d*|-\d+)", value.strip()):
            raise errors.InvalidRequestError(
                f"range must look like 'bytes=0-99', 'bytes=100-' or 'bytes=-50', got {value!r}",
                provider="s3", code="invalid_range")
        return value.strip()
    if isinstance(value, (tuple, list)) and len(value) == 2:
        start, end = value
        if not _is_index(start) or not (end is None or _is_index(end)) or (end is not None and end < start):
            raise errors.InvalidRequestError(
                f"range (start, end) needs 0 <= start <= end (inclusive), got {tuple(value)!r}",
                provider="s3", code="invalid_range")
        return f"bytes={start}-{'' if end is None else end}"
    raise errors.InvalidRequestError(f"range must be 'bytes=a-b' or (start, end), got {type(value).__name__}",
                                     provider="s3", code="invalid_range")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _iso(value: Any) -> str | None:
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    return None if value is None else str(value)


def _total_from_content_range(value: str | None) -> int | None:
    """The object size from ``Content-Range: bytes 0-99/1234``."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", value or "")
    return int(match.group(1)) if match else None


class _Params:
    """Checked access to one operation's params, with messages naming the field."""

    __slots__ = ("op", "values")

    def __init__(self, op: str, values: Mapping[str, Any]) -> None:
        self.op = op
        self.values = dict(values)

    def invalid(self, message: str, code: str) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(f"s3 {self.op}: {message}", provider="s3", code=code)

    def key(self, name: str = "key") -> str:
        key = self.values.get(name)
        if not isinstance(key, str) or not key:
            raise self.invalid(f"'{name}' must be a non-empty string", "invalid_key")
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise self.invalid(f"'{name}' is longer than {MAX_KEY_BYTES} bytes of UTF-8", "invalid_key")
        return key

    def body(self) -> bytes:
        body = self.values.get("body")
        if isinstance(body, (bytearray, memoryview)):
            return bytes(body)
        if isinstance(body, str):
            return body.encode("utf-8")
        if not isinstance(body, bytes):
            raise self.invalid("'body' must be bytes (read files on the caller's side: the request may "
                               "run on another machine)", "invalid_body")
        return body

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.invalid(f"'{name}' must be a non-empty string", f"invalid_{name}")
        return value

    def integer(self, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
        value = self.values.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.invalid(f"'{name}' must be a whole number from {lo} to {hi}, got {value!r}",
                               f"invalid_{name}")
        return value

    def metadata(self) -> dict[str, str]:
        meta = self.values.get("metadata") or {}
        if not isinstance(meta, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                    for k, v in meta.items()):
            raise self.invalid("'metadata' must map non-empty strings to strings", "invalid_metadata")
        return {k.lower(): v for k, v in meta.items()}


@register
class S3Provider(Provider):
    name = "s3"
    default_base_url = ""
    operations = frozenset({"s3_put", "s3_get", "s3_head", "s3_list", "s3_delete", "s3_upload",
                            "s3_download", "s3_presign"})
    sends_request_id = False
    description = "S3-compatible object storage (AWS, MinIO, moto) as a model store, through boto3"

    #: op -> the method that runs it in a worker thread: (params) -> (data, raw)
    _HANDLERS: ClassVar[Mapping[str, str]] = {
        "s3_put": "_put", "s3_get": "_get", "s3_download": "_download", "s3_head": "_head",
        "s3_list": "_list", "s3_delete": "_delete", "s3_presign": "_presign", "s3_upload": "_upload",
    }

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.base_url = (endpoint.base_url or "").rstrip("/")
        self._options: Mapping[str, Any] = dict(getattr(endpoint, "options", None) or {})
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- settings -------------------------------------------------------------
    def _option_str(self, name: str, default: str | None = None) -> str | None:
        value = self._options.get(name, default)
        if value is None:
            return None
        value = value.get() if hasattr(value, "get") and not isinstance(value, Mapping) else value
        if not isinstance(value, str) or not value.strip():
            raise errors.ConfigError(f"endpoint {self.endpoint.id!r}: options.{name} must be a non-empty string",
                                     provider=self.name, endpoint_id=self.endpoint.id)
        return value.strip()

    @property
    def region(self) -> str:
        return self._option_str("region") or DEFAULT_REGION

    @property
    def default_bucket(self) -> str | None:
        return self._option_str("bucket")

    @property
    def is_aws(self) -> bool:
        if not self.base_url:
            return True
        host = urlparse(self.base_url).hostname or ""
        return host == "amazonaws.com" or host.endswith(".amazonaws.com")

    def addressing_style(self) -> str:
        style = self._option_str("addressing_style") or ("auto" if self.is_aws else "path")
        if style not in _ADDRESSING_STYLES:
            raise errors.ConfigError(
                f"endpoint {self.endpoint.id!r}: options.addressing_style must be one of "
                f"{', '.join(_ADDRESSING_STYLES)}, got {style!r}", provider=self.name, endpoint_id=self.endpoint.id)
        return style

    def _credentials(self) -> dict[str, str]:
        access = self._option_str("access_key_id")
        secret = self._option_str("secret_access_key") or self.api_key
        token = self._option_str("session_token")
        if bool(access) != bool(secret):
            missing = "secret_access_key (or api_key)" if access else "access_key_id"
            raise errors.ConfigError(f"endpoint {self.endpoint.id!r}: S3 credentials need both access_key_id "
                                     f"and secret_access_key; {missing} is missing", provider=self.name,
                                     endpoint_id=self.endpoint.id)
        creds: dict[str, str] = {}
        if access and secret:
            creds = {"aws_access_key_id": access, "aws_secret_access_key": secret}
            errors.register_secret(secret)
        if token:
            creds["aws_session_token"] = token
            errors.register_secret(token)
        return creds

    def _secrets(self) -> list[str]:
        found = [self.api_key or ""]
        for name in ("secret_access_key", "session_token"):
            value = self._options.get(name)
            if value is not None and hasattr(value, "get"):
                found.append(str(value.get()))
        return [s for s in found if s]

    # -- the boto3 client ---------------------------------------------------------
    def client(self) -> Any:
        """The endpoint's boto3 S3 client, built on first use.

        One client per provider instance: boto3 clients are thread-safe for
        calls (creating them is not, hence the lock).  The connection pool is
        sized to the endpoint's concurrency limit so parallel parts do not
        queue inside urllib3.
        """
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> Any:
        try:
            import boto3  # noqa: PLC0415 - optional dependency, loaded on first use
            from botocore.config import Config  # noqa: PLC0415
        except ImportError:
            raise errors.ConfigError(_INSTALL_HINT, provider=self.name, endpoint_id=self.endpoint.id) from None
        timeout = float(getattr(self.endpoint, "timeout_s", 60.0) or 60.0)
        pool = max(10, min(int(getattr(self.endpoint, "max_concurrent_requests", 10) or 10), 256))
        config = Config(
            region_name=self.region, signature_version="s3v4",
            s3={"addressing_style": self.addressing_style()},
            # one attempt: the router owns retries, backoff, failover and the circuit
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=min(10.0, timeout), read_timeout=timeout,
            max_pool_connections=pool, user_agent_extra="ipfs-accelerate-py")
        kwargs: dict[str, Any] = {"config": config}
        if self.base_url:
            kwargs["endpoint_url"] = self.base_url
        verify = self._options.get("verify")
        if verify is not None:
            kwargs["verify"] = verify
        session = boto3.session.Session(region_name=self.region, **self._credentials())
        return session.client("s3", **kwargs)

    # -- execution -------------------------------------------------------------
    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """Run one S3 call in a worker thread; the transport is not used."""
        self.require(op)
        params = _Params(op, op_params(request))
        handler: Callable[[_Params], tuple[Any, Any]] = getattr(self, self._HANDLERS[op])
        try:
            data, raw = await asyncio.to_thread(handler, params)
        except errors.GatewayError as exc:
            raise exc.with_context(provider=self.name, endpoint_id=self.endpoint.id)
        except Exception as exc:  # noqa: BLE001 - every boto3/botocore failure becomes a typed error
            raise self.map_error(exc, op, params) from None
        model = request.model if isinstance(request, OperationRequest) else None
        return OperationResponse(op=op, data=data, model=model, provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=raw), {}

    def bucket(self, params: _Params) -> str:
        bucket = params.values.get("bucket") or self.default_bucket
        if not isinstance(bucket, str) or not bucket:
            raise params.invalid("no bucket: pass 'bucket' or set options.bucket on the endpoint", "missing_bucket")
        return bucket

    # -- operations (worker thread) ------------------------------------------------
    def _put(self, p: _Params) -> tuple[dict, dict]:
        bucket, key, body = self.bucket(p), p.key(), p.body()
        metadata = p.metadata()
        digest = sha256_hex(body)
        if metadata.get("sha256", digest) != digest:
            raise p.invalid("metadata sha256 does not match the body", "sha256_mismatch")
        metadata["sha256"] = digest
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "Metadata": metadata}
        content_type = p.string("content_type")
        if content_type:
            kwargs["ContentType"] = content_type
        resp = self.client().put_object(**kwargs)
        data = {"bucket": bucket, "key": key, "etag": resp.get("ETag"), "size": len(body), "sha256": digest,
                "version_id": resp.get("VersionId")}
        return data, _meta(resp)

    def _get_object(self, p: _Params, bucket: str, key: str, byte_range: str | None) -> tuple[bytes, dict]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if byte_range:
            kwargs["Range"] = byte_range
        if_match = p.string("if_match")
        if if_match:
            # the object must not change between the parts of one download
            kwargs["IfMatch"] = if_match
        resp = self.client().get_object(**kwargs)
        stream = resp["Body"]
        try:
            body = stream.read()
        finally:
            stream.close()
        raw = {"bucket": bucket, "key": key, "content_length": resp.get("ContentLength"),
               "content_range": resp.get("ContentRange"), "etag": resp.get("ETag"),
               "content_type": resp.get("ContentType"), "metadata": dict(resp.get("Metadata") or {}),
               "last_modified": _iso(resp.get("LastModified")),
               "total": _total_from_content_range(resp.get("ContentRange")) or resp.get("ContentLength")}
        return body, raw

    def _get(self, p: _Params) -> tuple[bytes, dict]:
        byte_range = p.values.get("range")
        return self._get_object(p, self.bucket(p), p.key(), parse_range(byte_range) if byte_range else None)

    def _download(self, p: _Params) -> tuple[bytes, dict]:
        """One ranged GET of a download; ``range`` or ``offset`` + ``length``."""
        if p.values.get("range") is not None:
            byte_range = parse_range(p.values["range"])
        else:
            offset = p.integer("offset", 0, 2**63 - 1)
            length = p.integer("length", 1, MAX_PART_SIZE)
            if offset is None or length is None:
                raise p.invalid("needs 'range' or 'offset' and 'length'", "missing_range")
            byte_range = f"bytes={offset}-{offset + length - 1}"
        return self._get_object(p, self.bucket(p), p.key(), byte_range)

    def _head(self, p: _Params) -> tuple[dict, dict]:
        resp = self.client().head_object(Bucket=self.bucket(p), Key=p.key())
        data = {"ContentLength": resp.get("ContentLength"), "ETag": resp.get("ETag"),
                "LastModified": _iso(resp.get("LastModified")), "ContentType": resp.get("ContentType"),
                "Metadata": dict(resp.get("Metadata") or {})}
        return data, _meta(resp)

    def _list(self, p: _Params) -> tuple[dict, dict]:
        """One page of ``list_objects_v2``; the caller follows ``next_token``."""
        prefix = p.values.get("prefix") or ""
        if not isinstance(prefix, str):
            raise p.invalid("'prefix' must be a string", "invalid_prefix")
        kwargs: dict[str, Any] = {"Bucket": self.bucket(p), "Prefix": prefix}
        optional = {"Delimiter": p.string("delimiter"), "MaxKeys": p.integer("max_keys", 1, 1000),
                    "ContinuationToken": p.string("continuation_token"), "StartAfter": p.string("start_after")}
        kwargs.update((k, v) for k, v in optional.items() if v is not None)
        resp = self.client().list_objects_v2(**kwargs)
        objects = [{"key": o.get("Key"), "size": o.get("Size"), "etag": o.get("ETag"),
                    "last_modified": _iso(o.get("LastModified"))} for o in resp.get("Contents") or []]
        prefixes = [c.get("Prefix") for c in resp.get("CommonPrefixes") or [] if c.get("Prefix")]
        token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        data = {"objects": objects, "prefixes": prefixes, "next_token": token,
                "is_truncated": bool(resp.get("IsTruncated"))}
        return data, _meta(resp)

    def _delete(self, p: _Params) -> tuple[dict, dict]:
        """``key`` -> delete_object; ``keys`` -> delete_objects in batches of 1000.

        Per-key failures of a batch come back in ``errors`` (S3 answers 200
        for the batch); deleting a missing key is not an error in S3.
        """
        bucket = self.bucket(p)
        keys = p.values.get("keys")
        if keys is None:
            key = p.key()
            self.client().delete_object(Bucket=bucket, Key=key)
            return {"deleted": [key], "errors": []}, {"bucket": bucket}
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)) or not all(
                isinstance(k, str) and k for k in keys):
            raise p.invalid("'keys' must be a list of non-empty strings", "invalid_keys")
        deleted: list[str] = []
        failed: list[dict] = []
        for start in range(0, len(keys), MAX_DELETE_BATCH):
            batch = keys[start:start + MAX_DELETE_BATCH]
            resp = self.client().delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": False})
            deleted.extend(d.get("Key") for d in resp.get("Deleted") or [])
            failed.extend({"key": e.get("Key"), "code": e.get("Code"), "message": e.get("Message")}
                          for e in resp.get("Errors") or [])
        return {"deleted": deleted, "errors": failed}, {"bucket": bucket, "requested": len(keys)}

    def _presign(self, p: _Params) -> tuple[str, dict]:
        """A presigned GET or PUT URL; computed locally (no request to S3).

        The verb is ``method`` or ``http_method`` (``Gateway.call`` cannot
        forward a keyword named ``method``: it collides with its own parameter).
        """
        method = p.values.get("http_method") or p.values.get("method") or "get"
        if method not in ("get", "put"):
            raise p.invalid(f"'http_method' must be 'get' or 'put', got {method!r}", "invalid_method")
        expires = p.integer("expires_s", 1, MAX_PRESIGN_S, default=3600)
        params: dict[str, Any] = {"Bucket": self.bucket(p), "Key": p.key()}
        content_type = p.string("content_type")
        if method == "put" and content_type:
            params["ContentType"] = content_type  # the uploader must then send the same header
        url = self.client().generate_presigned_url(f"{method}_object", Params=params, ExpiresIn=expires)
        return url, {"method": method, "expires_s": expires, **params}

    def _upload(self, p: _Params) -> tuple[dict, dict]:
        """Multipart primitives; each call is one routed request."""
        action = p.values.get("action")
        if action not in _UPLOAD_ACTIONS:
            raise p.invalid(f"'action' must be one of {', '.join(_UPLOAD_ACTIONS)}, got {action!r}",
                            "invalid_action")
        bucket, key = self.bucket(p), p.key()
        s3 = self.client()
        if action == "create":
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Metadata": p.metadata()}
            content_type = p.string("content_type")
            if content_type:
                kwargs["ContentType"] = content_type
            resp = s3.create_multipart_upload(**kwargs)
            return {"upload_id": resp["UploadId"], "bucket": bucket, "key": key}, _meta(resp)
        upload_id = p.string("upload_id")
        if not upload_id:
            raise p.invalid(f"action {action!r} needs the 'upload_id' from action 'create'", "missing_upload_id")
        if action == "part":
            number = p.integer("part_number", 1, MAX_PART_NUMBER)
            if number is None:
                raise p.invalid("action 'part' needs 'part_number' (1-10000)", "missing_part_number")
            body = p.body()
            resp = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            return {"etag": resp["ETag"], "part_number": number, "size": len(body)}, _meta(resp)
        if action == "complete":
            parts = _completed_parts(p)
            resp = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                MultipartUpload={"Parts": parts})
            return {"bucket": bucket, "key": key, "etag": resp.get("ETag"), "parts": len(parts),
                    "version_id": resp.get("VersionId")}, _meta(resp)
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        return {"aborted": True, "upload_id": upload_id, "bucket": bucket, "key": key}, {}

    # -- errors -------------------------------------------------------------------
    def map_error(self, exc: BaseException, op: str, p: _Params) -> errors.GatewayError:
        """The typed error for a boto3/botocore failure; messages never carry secrets."""
        where = op
        bucket = p.values.get("bucket") or self._options.get("bucket")
        key = p.values.get("key")
        if isinstance(bucket, str) and bucket:
            where += f" {bucket}/{key}" if isinstance(key, str) else f" {bucket}"
        kw: dict[str, Any] = {"provider": self.name, "endpoint_id": self.endpoint.id}
        try:
            from botocore import exceptions as bce  # noqa: PLC0415
        except ImportError:  # pragma: no cover - a client could not have been built
            return errors.ProviderError(errors.redact(f"{where}: {exc}", self._secrets()), **kw)
        secrets = self._secrets()
        if isinstance(exc, bce.ClientError):
            response = getattr(exc, "response", {}) or {}
            err = response.get("Error") or {}
            meta = response.get("ResponseMetadata") or {}
            status = meta.get("HTTPStatusCode")
            code = err.get("Code")
            message = err.get("Message") or str(code or "")
            retry_after = _retry_after(meta.get("HTTPHeaders") or {})
            label = f"{code}: " if code and str(code) != str(status) else ""
            text = errors.redact(f"{where}: {label}{message} (HTTP {status})", secrets)
            return error_for_code(str(code) if code else None, text, status=status, retry_after=retry_after, **kw)
        text = errors.redact(f"{where}: {type(exc).__name__}: {exc}", secrets)
        if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError)):
            return errors.TimeoutError(text, retryable=True, **kw)
        if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.ConnectionError,
                            bce.ResponseStreamingError, bce.IncompleteReadError)):
            return errors.ConnectionError(text, retryable=True, **kw)
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return errors.AuthenticationError(
                f"{where}: no S3 credentials: set options.access_key_id and options.secret_access_key on the "
                "endpoint (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)", retryable=False, **kw)
        if isinstance(exc, bce.ParamValidationError):
            return errors.InvalidRequestError(text, **kw)
        if isinstance(exc, bce.BotoCoreError):
            return errors.ProviderError(text, retryable=True, **kw)
        return errors.ProviderError(text, retryable=False, **kw)


def _completed_parts(p: _Params) -> list[dict]:
    """``parts`` as CompleteMultipartUpload wants them: [{PartNumber, ETag}] in order."""
    raw = p.values.get("parts")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise p.invalid("action 'complete' needs 'parts': [{'part_number', 'etag'}, ...]", "missing_parts")
    parts = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise p.invalid("each part must be a mapping with 'part_number' and 'etag'", "invalid_parts")
        number = item.get("part_number", item.get("PartNumber"))
        etag = item.get("etag", item.get("ETag"))
        if not _is_index(number) or not 1 <= number <= MAX_PART_NUMBER or not isinstance(etag, str) or not etag:
            raise p.invalid(f"invalid part {dict(item)!r}: needs part_number 1-10000 and an etag", "invalid_parts")
        parts.append({"PartNumber": number, "ETag": etag})
    parts.sort(key=lambda part: part["PartNumber"])
    numbers = [part["PartNumber"] for part in parts]
    if len(set(numbers)) != len(numbers):
        raise p.invalid("part numbers must be unique", "invalid_parts")
    return parts


def _meta(resp: Mapping[str, Any]) -> dict:
    """What of boto3's ResponseMetadata is worth keeping (no headers: they are noise)."""
    meta = resp.get("ResponseMetadata") or {}
    return {"status": meta.get("HTTPStatusCode"), "request_id": meta.get("RequestId")}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    from ..core import backoff  # noqa: PLC0415 - light, but only needed on errors
    return backoff.retry_after_from_headers({str(k).lower(): str(v) for k, v in headers.items()})
