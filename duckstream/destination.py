"""Where an ingest writes: a local folder or an S3 prefix, with whole-file (atomic) writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from duckstream.errors import SyncError
from duckstream.redact import redact
from duckstream.storage import S3Settings

__all__ = ["Destination", "LocalDestination", "S3Destination"]


class Destination(Protocol):
    """Files by name under one folder or prefix; a file is visible only once whole."""

    def uri(self, name: str) -> str: ...

    def check_writable(self) -> None: ...

    def read_text(self, name: str) -> str | None: ...

    def write_text(self, name: str, text: str) -> None: ...

    def put_file(self, name: str, local: Path) -> None: ...


class LocalDestination:
    """A local folder; writes go to a hidden temporary name, then rename into place."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser().resolve()

    def uri(self, name: str) -> str:
        return str(self.folder / name)

    def check_writable(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".duckstream-probe-"):
                pass
        except OSError as exc:
            raise SyncError(f"cannot write to {self.folder}: {exc.strerror or exc}") from None

    def read_text(self, name: str) -> str | None:
        path = self.folder / name
        return path.read_text() if path.exists() else None

    def write_text(self, name: str, text: str) -> None:
        partial = self.folder / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, self.folder / name)

    def put_file(self, name: str, local: Path) -> None:
        partial = self.folder / f".{name}.partial"
        # copy, not rename: the local file may live on another file system
        with open(local, "rb") as source, open(partial, "wb") as target:
            while chunk := source.read(8 * 1024 * 1024):
                target.write(chunk)
        os.replace(partial, self.folder / name)


class S3Destination:
    """``s3://bucket/prefix``; an object appears only when its upload completes."""

    def __init__(self, bucket: str, prefix: str, s3: S3Settings) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._s3 = s3
        self._client: Any = boto3.client("s3", **s3.boto3_kwargs())

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def check_writable(self) -> None:
        # Ask first: some stores create a missing bucket on the first write.
        self._call("find", lambda: self._client.head_bucket(Bucket=self.bucket))
        probe = self._key(".duckstream-probe")
        self._call("write to", lambda: self._client.put_object(Bucket=self.bucket, Key=probe, Body=b""))
        self._call("write to", lambda: self._client.delete_object(Bucket=self.bucket, Key=probe))

    def read_text(self, name: str) -> str | None:
        import botocore.exceptions

        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._error("read from", exc) from None
        return bytes(body).decode()

    def write_text(self, name: str, text: str) -> None:
        key = self._key(name)
        self._call(
            "write to", lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=text.encode())
        )

    def put_file(self, name: str, local: Path) -> None:
        key = self._key(name)
        self._call("upload to", lambda: self._client.upload_file(str(local), self.bucket, key))

    def _call(self, what: str, action: Any) -> Any:
        import boto3.exceptions
        import botocore.exceptions

        try:
            return action()
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.S3UploadFailedError,
        ) as exc:
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: Exception) -> SyncError:
        text = redact(str(exc), [self._s3.access_key, self._s3.secret_key])
        hint = ""
        if "NoSuchBucket" in text or ("HeadBucket" in text and "404" in text):
            hint = f"; the bucket {self.bucket!r} does not exist: create it first"
        elif "AccessDenied" in text or "403" in text:
            hint = "; the credentials may not write there"
        return SyncError(f"cannot {what} s3://{self.bucket}/{self.prefix}: {text}{hint}")
