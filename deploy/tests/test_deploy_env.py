""".env.example lists every Settings field of every service (and every compose variable), each with a comment."""

from __future__ import annotations

from pathlib import Path

from deploy import validate as v

ENV = v.ROOT / ".env.example"


def test_env_example_is_complete() -> None:
    info = v.introspect()
    assert set(info.settings) == {pkg for pkg, _, _ in v.SERVICES.values()}, info.errors
    assert v.check_env_example(ENV, settings=info.settings) == []
    names = {e.name for e in v.parse_env_example(ENV)}
    for must in ("GEMINI_API_KEY", "ANTHROPIC_API_KEY", "VOYAGE_API_KEY", "COHERE_API_KEY", "DEEPGRAM_API_KEY",
                 "ELEVENLABS_API_KEY", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DATABASE_URL",
                 "MIGRATION_DATABASE_URL", "REDIS_URL", "SHUTDOWN_GRACE_SECONDS", "POSTGRES_PASSWORD"):
        assert must in names, must


def test_a_new_settings_field_must_be_listed(tmp_path: Path) -> None:
    settings = {pkg: dict(fields) for pkg, fields in v.introspect().settings.items()}
    settings["frugal.router"]["brand_new_knob"] = {"env": ["BRAND_NEW_KNOB"], "required": False}
    problems = v.check_env_example(ENV, settings=settings)
    assert problems == [".env.example: BRAND_NEW_KNOB (frugal.router.config.Settings.brand_new_knob) is missing"]


def test_missing_comment_empty_value_and_real_secret_are_reported(tmp_path: Path) -> None:
    text = ENV.read_text()
    text += "\nUNDOCUMENTED_THING=1\n# Some key.\nGEMINI_API_KEY=\n# Another.\nDEEPGRAM_API_KEY=dg_live_4f9a8c7e\n"
    path = tmp_path / ".env.example"
    path.write_text(text)
    problems = v.check_env_example(path, settings={})
    assert any("UNDOCUMENTED_THING has no comment" in p for p in problems)
    assert any("GEMINI_API_KEY= is empty" in p for p in problems)
    assert any("DEEPGRAM_API_KEY looks like a real secret" in p for p in problems)
    assert any("GEMINI_API_KEY is listed twice" in p for p in problems)


def test_compose_variables_must_be_listed(tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  a:\n    image: x:${NEW_TAG:-1}\n    environment:\n      K: ${NO_DEFAULT}\n")
    problems = v.check_env_example(ENV, compose, settings={})
    assert ".env.example: NEW_TAG (used in docker-compose.yml) is not listed" in problems
    assert ".env.example: NO_DEFAULT (used in docker-compose.yml) is not listed" in problems
