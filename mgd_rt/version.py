"""The one place the mgd-rt version is written (pyproject.toml repeats it for packaging)."""

__version__ = "0.1.0"
