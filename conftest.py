"""Root conftest: loads the book's block harness (tests/harness) for every pytest run."""

pytest_plugins = ["tests.harness.plugin", "pytester"]
