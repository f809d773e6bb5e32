"""A local environment for a module-scoped fixture (a test's own comes from conftest's `aiml_home`)."""

from contextlib import contextmanager

import pytest

from aiml_assets.settings import load_settings

TEST_ERASURE_KEY = "test-erasure-key-not-a-secret"  # the tests' AIML_ERASURE_KEY (resources/*.yaml erasure.key_env)


@contextmanager
def local_environment(home, **env: str):
    """AIML_ENV=local with its home at `home` (and any further variables), settings reloaded on the way in and out."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AIML_HOME": str(home), "AIML_ENV": "local", "AIML_ERASURE_KEY": TEST_ERASURE_KEY,
                             **env}.items():
            mp.setenv(name, value)
        load_settings.cache_clear()
        try:
            yield
        finally:
            load_settings.cache_clear()
