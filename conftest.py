"""Repository-wide pytest setup (shared by every package's tests)."""

pytest_plugins = ["pytester"]
