from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from duckstream import redact as redact_module
from duckstream.errors import ConfigurationError
from duckstream.storage import DEFAULT_REGION, S3Settings


def test_endpoint_without_scheme_is_plain_http_and_path_style() -> None:
    s3 = S3Settings.resolve("127.0.0.1:9000", "key1", "secret1", environ={})
    assert (s3.endpoint, s3.use_ssl, s3.url_style) == ("127.0.0.1:9000", False, "path")
    assert s3.endpoint_url == "http://127.0.0.1:9000"


def test_endpoint_without_scheme_can_ask_for_ssl() -> None:
    s3 = S3Settings.resolve("store.example:443", environ={}, use_ssl=True)
    assert s3.use_ssl
    assert s3.endpoint_url == "https://store.example:443"


@pytest.mark.parametrize(
    ("endpoint", "host", "ssl"),
    [("http://h:1", "h:1", False), ("https://h:2/", "h:2", True), ("h:3", "h:3", False)],
)
def test_scheme_decides_ssl(endpoint: str, host: str, ssl: bool) -> None:
    s3 = S3Settings.resolve(endpoint, environ={})
    assert (s3.endpoint, s3.use_ssl) == (host, ssl)


def test_scheme_and_use_ssl_that_disagree_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="says http but s3_use_ssl=True"):
        S3Settings.resolve("http://h:1", environ={}, use_ssl=True)


@pytest.mark.parametrize("endpoint", ["ftp://h:1", "http://h:1/bucket", "http://u:p@h:1", "http://"])
def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigurationError, match="S3 endpoint"):
        S3Settings.resolve(endpoint, environ={})


def test_environment_fills_what_arguments_leave_out() -> None:
    env = {
        "DUCKSTREAM_S3_ENDPOINT": "http://env-host:9000",
        "AWS_ACCESS_KEY_ID": "env-key",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_REGION": "eu-west-3",
    }
    s3 = S3Settings.resolve(environ=env)
    assert (s3.endpoint, s3.access_key, s3.secret_key, s3.region) == (
        "env-host:9000",
        "env-key",
        "env-secret",
        "eu-west-3",
    )
    explicit = S3Settings.resolve("other:1", "arg-key", "arg-secret", environ=env)
    assert (explicit.endpoint, explicit.access_key, explicit.secret_key) == (
        "other:1",
        "arg-key",
        "arg-secret",
    )


def test_no_endpoint_means_aws_with_https_and_a_region() -> None:
    s3 = S3Settings.resolve(environ={})
    assert s3.endpoint is None
    assert s3.use_ssl
    assert s3.url_style == "vhost"
    assert s3.region == DEFAULT_REGION
    assert not s3.has_credentials


def test_half_credentials_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="secret key is missing"):
        S3Settings.resolve("h:1", "only-key", None, environ={})


def test_client_options_carry_the_endpoint_and_keys() -> None:
    s3 = S3Settings.resolve("h:1", "key-abc", "secret-abc", environ={})
    assert s3.boto3_kwargs() == {
        "region_name": DEFAULT_REGION,
        "endpoint_url": "http://h:1",
        "aws_access_key_id": "key-abc",
        "aws_secret_access_key": "secret-abc",
        "aws_session_token": None,
    }
    options = s3.fsspec_options()
    assert (options["endpoint_url"], options["key"], options["secret"]) == (
        "http://h:1",
        "key-abc",
        "secret-abc",
    )


secret_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=4, max_size=40)


BASELINE = repr(S3Settings.resolve("h:1", "placeholder-key", "placeholder-secret", environ={}))


@pytest.fixture
def registry_restored() -> Iterator[None]:
    # Random "secrets" stay registered for the whole process and would mask words in the
    # messages of later tests ("then" in "authentication"): forget them afterwards.
    saved = set(redact_module._registered)
    yield
    redact_module._registered.clear()
    redact_module._registered.update(saved)


@pytest.mark.usefixtures("registry_restored")
@given(key=secret_text, secret=secret_text)
def test_repr_never_shows_keys(key: str, secret: str) -> None:
    # A "secret" such as "Fals" can occur in the repr's own text (use_ssl=False): not a leak.
    assume(key not in BASELINE and secret not in BASELINE)
    s3 = S3Settings.resolve("h:1", key, secret, environ={})
    shown = repr(s3) + str(s3)
    assert key not in shown
    assert secret not in shown
