"""The version of silo, written here only: the distribution (``silo-restore``) reads it at build time, and
``silo.__version__``, ``silo --version`` and every log read it from here."""

__version__ = "0.1.0"
