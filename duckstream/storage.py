"""S3 connection settings, resolved from explicit arguments or the environment, never shown."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from duckstream.errors import ConfigurationError
from duckstream.redact import MASK, register_secret

__all__ = ["DEFAULT_REGION", "ENV_ENDPOINT", "S3Settings", "pyarrow_s3"]

ENV_ENDPOINT = "DUCKSTREAM_S3_ENDPOINT"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SESSION_TOKEN = "AWS_SESSION_TOKEN"
ENV_REGIONS = ("DUCKSTREAM_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
ENV_RETRY_SECONDS = "DUCKSTREAM_S3_RETRY_SECONDS"
# How long reads wait out an object store that does not answer before giving up.
DEFAULT_RETRY_SECONDS = 300.0
# DuckDB signs requests for a region; S3-compatible stores accept any, but one must be set.
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach an S3-compatible store.

    ``endpoint`` is ``host[:port]`` without scheme (None: AWS itself); ``use_ssl`` says whether
    to speak https. Keys are kept out of ``repr`` and registered for redaction everywhere.
    ``retry_seconds``: how long a read waits out a store that does not answer (an outage, a
    reset connection, a 5xx), retrying with backoff, before it fails.
    """

    endpoint: str | None = None
    use_ssl: bool = True
    region: str = DEFAULT_REGION
    url_style: str = "vhost"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    retry_seconds: float = DEFAULT_RETRY_SECONDS

    def __post_init__(self) -> None:
        if not self.retry_seconds >= 0:
            raise ConfigurationError(
                f"the S3 retry deadline must be 0 seconds or more, found {self.retry_seconds!r}"
            )
        for secret in (self.access_key, self.secret_key, self.session_token):
            register_secret(secret)
        if (self.access_key is None) != (self.secret_key is None):
            missing = "secret key" if self.secret_key is None else "access key"
            raise ConfigurationError(
                f"S3 credentials are incomplete: the {missing} is missing; give both "
                f"s3_access_key and s3_secret_key (or {ENV_ACCESS_KEY} and {ENV_SECRET_KEY})"
            )

    def __repr__(self) -> str:
        keys = MASK if self.access_key else None
        return (
            f"S3Settings(endpoint={self.endpoint!r}, use_ssl={self.use_ssl}, "
            f"region={self.region!r}, url_style={self.url_style!r}, "
            f"access_key={keys!r}, secret_key={keys!r})"
        )

    @classmethod
    def resolve(
        cls,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        region: str | None = None,
        use_ssl: bool | None = None,
        retry_seconds: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> S3Settings:
        """Settings from explicit arguments, each falling back to the environment.

        An endpoint with a scheme (``http://h:p``) decides SSL itself; without one (``h:p``) it
        is plain http unless ``use_ssl=True``. A custom endpoint implies path-style URLs, which
        every S3-compatible store understands. ``retry_seconds`` defaults to
        ``DUCKSTREAM_S3_RETRY_SECONDS``, else 300.
        """
        env = os.environ if environ is None else environ
        endpoint = endpoint or env.get(ENV_ENDPOINT) or None
        access_key = access_key or env.get(ENV_ACCESS_KEY) or None
        secret_key = secret_key or env.get(ENV_SECRET_KEY) or None
        token = env.get(ENV_SESSION_TOKEN) or None
        region = region or next((env[n] for n in ENV_REGIONS if env.get(n)), DEFAULT_REGION)
        retry = _retry_seconds(env.get(ENV_RETRY_SECONDS)) if retry_seconds is None else retry_seconds
        if endpoint is None:
            return cls(
                endpoint=None,
                use_ssl=True if use_ssl is None else use_ssl,
                region=region,
                url_style="vhost",
                access_key=access_key,
                secret_key=secret_key,
                session_token=token,
                retry_seconds=retry,
            )
        host, scheme_ssl = _split_endpoint(endpoint)
        if scheme_ssl is not None and use_ssl is not None and scheme_ssl != use_ssl:
            raise ConfigurationError(
                f"S3 endpoint {endpoint!r} says {'https' if scheme_ssl else 'http'} but "
                f"s3_use_ssl={use_ssl}; drop one of the two"
            )
        ssl = scheme_ssl if scheme_ssl is not None else bool(use_ssl)
        return cls(
            endpoint=host,
            use_ssl=ssl,
            region=region,
            url_style="path",
            access_key=access_key,
            secret_key=secret_key,
            session_token=token,
            retry_seconds=retry,
        )

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint as a URL (``http://h:p``) for boto3, s3fs and pyarrow; None for AWS."""
        if self.endpoint is None:
            return None
        return f"{'https' if self.use_ssl else 'http'}://{self.endpoint}"

    @property
    def has_credentials(self) -> bool:
        return self.access_key is not None

    def boto3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("s3", ...)``."""
        kwargs: dict[str, Any] = {"region_name": self.region}
        if self.endpoint_url is not None:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.access_key is not None:
            kwargs["aws_access_key_id"] = self.access_key
            kwargs["aws_secret_access_key"] = self.secret_key
            kwargs["aws_session_token"] = self.session_token
        return kwargs

    def fsspec_options(self) -> dict[str, Any]:
        """``storage_options`` for s3fs (fsspec's ``s3://`` filesystem)."""
        options: dict[str, Any] = {"client_kwargs": {"region_name": self.region}}
        if self.endpoint_url is not None:
            options["endpoint_url"] = self.endpoint_url
        if self.access_key is not None:
            options.update(key=self.access_key, secret=self.secret_key, token=self.session_token)
        else:
            options["anon"] = False
        return options


def pyarrow_s3(s3: S3Settings) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for these settings (paths are ``bucket/key``)."""
    from pyarrow import fs

    kwargs: dict[str, Any] = {"region": s3.region, "scheme": "https" if s3.use_ssl else "http"}
    if s3.endpoint is not None:
        kwargs["endpoint_override"] = s3.endpoint
    if s3.access_key is not None:
        kwargs.update(access_key=s3.access_key, secret_key=s3.secret_key, session_token=s3.session_token)
    return fs.S3FileSystem(**kwargs)


def _retry_seconds(text: str | None) -> float:
    if not text:
        return DEFAULT_RETRY_SECONDS
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(f"{ENV_RETRY_SECONDS} must be a number of seconds, found {text!r}") from None


def _split_endpoint(endpoint: str) -> tuple[str, bool | None]:
    """``("h:p", ssl)`` from ``h:p`` (ssl None: not said) or ``http(s)://h:p[/]``."""
    if "://" not in endpoint:
        host, ssl = endpoint, None
    else:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise ConfigurationError(
                f"S3 endpoint {endpoint!r} has scheme {parts.scheme!r}; expected http://, "
                "https:// or host:port without a scheme"
            )
        if parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(
                f"S3 endpoint {endpoint!r} has a path; expected only scheme, host and port"
            )
        host, ssl = parts.netloc, parts.scheme == "https"
    host = host.rstrip("/")
    if not host or "/" in host or "@" in host:
        raise ConfigurationError(f"S3 endpoint {endpoint!r} is not of the form host[:port]")
    return host, ssl
