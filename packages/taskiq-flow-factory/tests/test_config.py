"""TaskiqFlowConfig: environment parsing, precedence, validation, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskiq_flow.config import (
    BackendNotInstalledError,
    ConfigError,
    TaskiqFlowConfig,
    mask_url,
)

GUIDE_VARS = [
    "TASKIQ_FLOW_STORAGE_TYPE",
    "TASKIQ_FLOW_STORAGE_REDIS_URL",
    "TASKIQ_FLOW_STORAGE_TTL_SECONDS",
    "TASKIQ_FLOW_CACHE_TYPE",
    "TASKIQ_FLOW_CACHE_REDIS_URL",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)


def test_defaults_without_environment() -> None:
    config = TaskiqFlowConfig()
    assert config.storage_type == "auto"
    assert config.cache_type == "auto"
    assert config.resolved_storage_type == "inmemory"
    assert config.resolved_cache_type == "inmemory"
    assert config.storage_ttl_seconds is None
    assert config.cache_default_ttl == 3600
    assert config.cache_lock_timeout == 10
    assert config.storage_enabled is True
    assert config.cache_enabled is True
    assert config.storage_key_prefix == "taskiq_flow:"
    assert config.cache_key_prefix == "taskiq_flow_cache:"
    assert all(config.source_of(s["name"]) == "default" for s in TaskiqFlowConfig.settings())


def test_every_setting_has_an_env_var_named_after_it() -> None:
    for item in TaskiqFlowConfig.settings():
        assert item["env_var"] == "TASKIQ_FLOW_" + item["name"].upper()
        assert item["description"]
    names = {s["env_var"] for s in TaskiqFlowConfig.settings()}
    assert set(GUIDE_VARS) <= names


def test_reads_every_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "TASKIQ_FLOW_STORAGE_TYPE": "SQLite ",
        "TASKIQ_FLOW_STORAGE_REDIS_URL": "redis://h1:6390/2",
        "TASKIQ_FLOW_STORAGE_SQLITE_PATH": str(tmp_path / "s.db"),
        "TASKIQ_FLOW_STORAGE_TTL_SECONDS": "86_400",
        "TASKIQ_FLOW_STORAGE_MAX_ENTRIES": "50",
        "TASKIQ_FLOW_STORAGE_KEY_PREFIX": "app1:",
        "TASKIQ_FLOW_STORAGE_SPOOL_DIR": str(tmp_path / "spool"),
        "TASKIQ_FLOW_STORAGE_ENABLED": "off",
        "TASKIQ_FLOW_CACHE_TYPE": "inmemory",
        "TASKIQ_FLOW_CACHE_REDIS_URL": "rediss://h2:6391",
        "TASKIQ_FLOW_CACHE_DEFAULT_TTL": "60",
        "TASKIQ_FLOW_CACHE_LOCK_TIMEOUT": "5",
        "TASKIQ_FLOW_CACHE_MAX_ENTRIES": "7",
        "TASKIQ_FLOW_CACHE_KEY_PREFIX": "c1:",
        "TASKIQ_FLOW_CACHE_ENABLED": "No",
        "TASKIQ_FLOW_CACHE_AT_SEND": "false",
        "TASKIQ_FLOW_RESULT_BACKEND": "True",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = TaskiqFlowConfig()
    assert config.to_dict() == {
        "storage_type": "sqlite",
        "storage_redis_url": "redis://h1:6390/2",
        "storage_sqlite_path": str(tmp_path / "s.db"),
        "storage_ttl_seconds": 86_400,
        "storage_max_entries": 50,
        "storage_key_prefix": "app1:",
        "storage_spool_dir": str(tmp_path / "spool"),
        "storage_enabled": False,
        "cache_type": "inmemory",
        "cache_redis_url": "rediss://h2:6391",
        "cache_default_ttl": 60,
        "cache_lock_timeout": 5,
        "cache_max_entries": 7,
        "cache_key_prefix": "c1:",
        "cache_enabled": False,
        "cache_at_send": False,
        "result_backend": True,
    }
    assert all(config.source_of(s["name"]) == "environment" for s in TaskiqFlowConfig.settings())


def test_explicit_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TYPE", "redis")
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_REDIS_URL", "redis://envhost:6379")
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "100")
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_DEFAULT_TTL", "5")
    config = TaskiqFlowConfig(
        storage_type="inmemory", storage_ttl_seconds=None, cache_default_ttl=9
    )
    assert config.storage_type == "inmemory"
    assert config.source_of("storage_type") == "argument"
    # An explicit None wins too: "no TTL", not "read the variable".
    assert config.storage_ttl_seconds is None
    assert config.cache_default_ttl == 9
    # Not given: still read from the environment.
    assert config.storage_redis_url == "redis://envhost:6379"
    assert config.source_of("storage_redis_url") == "environment"


def test_environ_mapping_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_TYPE", "reddis")
    assert TaskiqFlowConfig(environ={}).cache_type == "auto"
    assert TaskiqFlowConfig(environ={"TASKIQ_FLOW_CACHE_DEFAULT_TTL": "12"}).cache_default_ttl == 12


def test_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TYPE", "")
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "  ")
    config = TaskiqFlowConfig()
    assert config.storage_type == "auto"
    assert config.storage_ttl_seconds is None


@pytest.mark.parametrize(
    ("variable", "value", "allowed_fragment"),
    [
        ("TASKIQ_FLOW_STORAGE_TYPE", "reddis", "'auto', 'inmemory', 'redis', 'sqlite'"),
        ("TASKIQ_FLOW_CACHE_TYPE", "sqlite", "'auto', 'inmemory', 'redis'"),
        ("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "1.5", "whole number"),
        ("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "a day", "whole number"),
        ("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "-5", "whole number"),
        ("TASKIQ_FLOW_CACHE_DEFAULT_TTL", "0", "whole number"),
        ("TASKIQ_FLOW_CACHE_LOCK_TIMEOUT", "ten", "whole number"),
        ("TASKIQ_FLOW_STORAGE_REDIS_URL", "http://localhost:6379", "redis://"),
        ("TASKIQ_FLOW_STORAGE_REDIS_URL", "localhost:6379", "redis://"),
        ("TASKIQ_FLOW_CACHE_REDIS_URL", "redis://localhost:port", "redis://"),
        ("TASKIQ_FLOW_CACHE_REDIS_URL", "redis://localhost:6379/zero", "redis://"),
        ("TASKIQ_FLOW_CACHE_REDIS_URL", "redis://", "redis://"),
        ("TASKIQ_FLOW_CACHE_REDIS_URL", "unix://", "unix://"),
        ("TASKIQ_FLOW_STORAGE_SQLITE_PATH", "postgres://db/x", "sqlite:///"),
        ("TASKIQ_FLOW_STORAGE_SQLITE_PATH", "sqlite://x.db", "sqlite:///"),
        ("TASKIQ_FLOW_STORAGE_ENABLED", "maybe", "true/false"),
    ],
)
def test_bad_variable_names_itself_and_allowed_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed_fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        TaskiqFlowConfig()
    message = str(info.value)
    assert variable in message
    assert allowed_fragment in message
    assert info.value.source == variable
    assert info.value.allowed
    assert isinstance(info.value, ValueError)


def test_mistyped_type_suggests_the_right_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TYPE", "reddis")
    with pytest.raises(ConfigError, match=r"did you mean 'redis'\?"):
        TaskiqFlowConfig()


def test_bad_argument_names_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"^storage_type='reddis' is not allowed") as info:
        TaskiqFlowConfig(storage_type="reddis", environ={})
    assert info.value.source == "storage_type"
    with pytest.raises(ConfigError, match="cache_default_ttl"):
        TaskiqFlowConfig(cache_default_ttl=True, environ={})  # a bool is not a number
    with pytest.raises(ConfigError, match="storage_ttl_seconds"):
        TaskiqFlowConfig(storage_ttl_seconds=0, environ={})


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379",
        "redis://localhost:6379/3",
        "redis://:pw@localhost:6379/0",
        "redis://user:pw@10.0.0.1:6379/0",
        "rediss://cache.example.com:6380",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=2",
        "redis://[::1]:6379",
    ],
)
def test_accepted_redis_urls(url: str) -> None:
    assert TaskiqFlowConfig(cache_redis_url=url, environ={}).cache_redis_url == url


@pytest.mark.parametrize(
    "path",
    [":memory:", "store.sqlite3", "/var/lib/app/store.db", "sqlite:///rel.db", "sqlite:////abs.db"],
)
def test_accepted_sqlite_locations(path: str) -> None:
    config = TaskiqFlowConfig(storage_sqlite_path=path, environ={})
    assert config.storage_sqlite_path == path
    assert config.resolved_storage_type == "sqlite"


def test_sqlite_path_accepts_pathlike(tmp_path: Path) -> None:
    config = TaskiqFlowConfig(storage_sqlite_path=tmp_path / "x.db", environ={})
    assert config.storage_sqlite_path == str(tmp_path / "x.db")


@pytest.mark.parametrize(
    ("kwargs", "expected_storage", "expected_cache"),
    [
        ({}, "inmemory", "inmemory"),
        ({"storage_sqlite_path": "a.db"}, "sqlite", "inmemory"),
        ({"storage_redis_url": "redis://h"}, "redis", "inmemory"),
        # Redis beats SQLite when both are configured.
        ({"storage_redis_url": "redis://h", "storage_sqlite_path": "a.db"}, "redis", "inmemory"),
        # Each side looks only at its own URL.
        ({"cache_redis_url": "redis://h"}, "inmemory", "redis"),
        # An explicit type wins over what is configured.
        ({"storage_type": "inmemory", "storage_redis_url": "redis://h"}, "inmemory", "inmemory"),
        (
            {
                "storage_type": "sqlite",
                "storage_sqlite_path": "a.db",
                "storage_redis_url": "redis://h",
            },
            "sqlite",
            "inmemory",
        ),
        ({"cache_type": "inmemory", "cache_redis_url": "redis://h"}, "inmemory", "inmemory"),
    ],
)
def test_auto_rules(kwargs: dict[str, str], expected_storage: str, expected_cache: str) -> None:
    config = TaskiqFlowConfig(**kwargs, environ={})  # type: ignore[arg-type]
    assert config.resolved_storage_type == expected_storage
    assert config.resolved_cache_type == expected_cache


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TASKIQ_FLOW_STORAGE_TYPE": "redis"}, "TASKIQ_FLOW_STORAGE_REDIS_URL"),
        # "sqlite" without a path is the guide's default file (test_new_user.py).
        ({"TASKIQ_FLOW_CACHE_TYPE": "redis"}, "TASKIQ_FLOW_CACHE_REDIS_URL"),
        # The storage URL does not configure the cache: no silent sharing, no localhost.
        (
            {"TASKIQ_FLOW_CACHE_TYPE": "redis", "TASKIQ_FLOW_STORAGE_REDIS_URL": "redis://h"},
            "TASKIQ_FLOW_CACHE_REDIS_URL",
        ),
    ],
)
def test_selected_backend_without_location_is_an_error(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match="never connects to a default server") as info:
        TaskiqFlowConfig(environ=env)
    assert named in str(info.value)
    first = next(iter(env))
    assert first in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://s3cret@host", "rediss://***@host"),
        ("unix://user:s3cret@/tmp/r.sock?db=1", "unix://user:***@/tmp/r.sock?db=1"),
        ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_password_never_in_repr_str_dict_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TaskiqFlowConfig(
        storage_redis_url="redis://app:s3cret@host:6379/0",
        cache_redis_url="redis://host:6379/1?password=s3cret",
        environ={},
    )
    for text in (repr(config), str(config), str(config.to_dict()), str(dict(config))):
        assert "s3cret" not in text
        assert "***" in text
    assert (
        config.to_dict(mask_secrets=False)["storage_redis_url"] == "redis://app:s3cret@host:6379/0"
    )
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REDIS_URL", "redis://:s3cret@host:notaport")
    with pytest.raises(ConfigError) as info:
        TaskiqFlowConfig()
    assert "s3cret" not in str(info.value)
    assert "TASKIQ_FLOW_CACHE_REDIS_URL" in str(info.value)


def test_immutable_and_with_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_DEFAULT_TTL", "30")
    config = TaskiqFlowConfig()
    with pytest.raises(AttributeError):
        config.cache_default_ttl = 5  # type: ignore[misc]
    changed = config.with_changes(storage_sqlite_path=":memory:")
    assert changed.resolved_storage_type == "sqlite"
    assert changed.cache_default_ttl == 30
    assert changed.source_of("cache_default_ttl") == "environment"
    assert changed.source_of("storage_sqlite_path") == "argument"
    assert config.storage_sqlite_path is None
    assert changed != config
    assert changed == config.with_changes(storage_sqlite_path=":memory:")
    assert hash(changed) == hash(config.with_changes(storage_sqlite_path=":memory:"))
    with pytest.raises(ConfigError, match="unknown setting"):
        config.with_changes(storage_kind="redis")
    with pytest.raises(ConfigError, match="storage_type"):
        config.with_changes(storage_type="reddis")


def test_backend_not_installed_is_both_config_and_import_error() -> None:
    error = BackendNotInstalledError("redis", "taskiq-flow-storage[redis]", source="storage_type")
    assert isinstance(error, ConfigError)
    assert isinstance(error, ImportError)
    assert "pip install 'taskiq-flow-storage[redis]'" in str(error)


def test_cache_at_send_reaches_the_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskiq_flow.factory import StorageAdapterFactory

    monkeypatch.setenv("TASKIQ_FLOW_CACHE_AT_SEND", "0")
    assert StorageAdapterFactory.create_cache_middleware().answer_at_send is False
    monkeypatch.delenv("TASKIQ_FLOW_CACHE_AT_SEND")
    assert StorageAdapterFactory.create_cache_middleware().answer_at_send is True
