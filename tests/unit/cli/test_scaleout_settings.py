"""--store and --upstream on the command line: validation, redaction, one-upstream parity."""

from __future__ import annotations

import pytest

from cachelayer.cli.main import build_parser
from cachelayer.cli.serve import settings_from_args, store_secrets
from cachelayer.config import RoutingMode, check_store_url, redact_url


def settings(*argv: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["serve", *argv])
    return settings_from_args(args, env or {})


def test_one_upstream_keys_and_identity_are_unchanged() -> None:
    s = settings("--upstream", "http://127.0.0.1:8080/")
    assert s.backend_urls == ("http://127.0.0.1:8080",)
    assert s.upstream_identity == s.upstream_url == "http://127.0.0.1:8080"
    assert s.store_url is None and s.store_label == "diskcache"


def test_several_upstreams_keep_order_and_share_one_identity() -> None:
    s = settings("--upstream", "http://b:1", "--upstream", "http://a:1", "--upstream",
                 "http://b:1/", "--routing", "round-robin")
    assert s.backend_urls == ("http://b:1", "http://a:1")
    assert s.upstream_identity == "http://a:1,http://b:1"
    assert s.routing is RoutingMode.ROUND_ROBIN


def test_store_password_comes_from_the_url_or_the_environment_and_is_never_shown() -> None:
    s = settings("--upstream", "http://a:1", "--store", "redis://:hunter22@127.0.0.1:6390/2")
    assert s.store_label == "redis://:***@127.0.0.1:6390/2"
    assert "hunter22" not in repr(s)
    s = settings("--upstream", "http://a:1", "--store", "rediss://cache:6379/0",
                 env={"CACHELAYER_REDIS_PASSWORD": "from-env"})
    assert s.store_password == "from-env" and "from-env" not in repr(s)


def test_password_in_the_url_is_a_logging_secret() -> None:
    args = build_parser().parse_args(["serve", "--store", "redis://u:p%40ss!@h:1/0"])
    assert {"p%40ss!", "p@ss!", "from-env"} <= set(
        store_secrets(args, {"CACHELAYER_REDIS_PASSWORD": "from-env"}))


@pytest.mark.parametrize("url", ["http://h:1/0", "redis://", "memcached://h:1",
                                 "redis://:pw@h:notaport/0"])
def test_store_url_that_is_not_redis_is_refused_without_echoing_a_password(url: str) -> None:
    with pytest.raises(ValueError) as err:
        check_store_url(url)
    assert ":pw@" not in str(err.value)


def test_redact_url_leaves_passwordless_urls_alone() -> None:
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
