"""Config: every default written once, every bad value refused at start-up with its variable's name."""

from __future__ import annotations

import pytest

from backend.config import Config, ConfigError


def test_defaults_and_values_from_the_environment():
    assert Config.from_env({}) == Config()
    cfg = Config.from_env({"HEALTH_MAX_UNFLUSHED_AGE": "90", "CORS_ORIGINS": "https://a.example, https://b.example",
                           "AUTH_REQUIRED": "off", "BATCH_SIZE": "", "SUPABASE_URL": "https://x.supabase.co",
                           "DATABASE_URL": "postgresql://u@h/db"})
    assert cfg.health_max_unflushed_age == 90.0 and cfg.auth_required is False
    assert cfg.cors_origins == ["https://a.example", "https://b.example"]
    assert cfg.batch_size == 500  # empty = the default, as in .env.example


@pytest.mark.parametrize("env,named,why", [
    ({"ACK_TIMEOUT": "soon"}, "ACK_TIMEOUT", "valid number"),
    ({"ACK_TIMEOUT": "0"}, "ACK_TIMEOUT", "greater than 0"),
    ({"BATCH_SIZE": "-5"}, "BATCH_SIZE", "greater than or equal to 1"),
    ({"PORT": "70000"}, "PORT", "less than or equal to 65535"),
    ({"AUTH_REQUIRED": "maybe"}, "AUTH_REQUIRED", "valid boolean"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "logging level"),
    ({"DB_POOL_MIN": "8", "DB_POOL_MAX": "4"}, "DB_POOL_MIN=8 is above DB_POOL_MAX=4", ""),
])
def test_a_bad_value_names_the_variable_and_the_reason(env, named, why):
    with pytest.raises(ConfigError) as exc:
        Config.from_env(env)
    assert str(exc.value).startswith(named) and why in str(exc.value)


def test_the_environment_and_dotenv(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ACK_TIMEOUT=4\nFLUSH_INTERVAL=0.5\n")
    monkeypatch.setenv("ACK_TIMEOUT", "7")
    cfg = Config.from_env()
    assert cfg.ack_timeout == 7.0 and cfg.flush_interval == 0.5  # the environment wins over .env
    monkeypatch.setenv("FLUSH_INTERVAL", "never")
    with pytest.raises(ConfigError, match="^FLUSH_INTERVAL: "):
        Config.from_env()


def test_replace_validates_and_config_is_frozen():
    cfg = Config(database_url="postgresql://x", testing=True)
    assert cfg.replace(batch_size=7).batch_size == 7 and cfg.batch_size == 500
    with pytest.raises(ConfigError, match="^BATCH_SIZE: "):
        cfg.replace(batch_size=0)
    with pytest.raises(ConfigError, match="NO_SUCH_SETTING"):
        cfg.replace(no_such_setting=1)
    with pytest.raises(Exception, match="frozen"):
        cfg.batch_size = 3  # type: ignore[misc]
