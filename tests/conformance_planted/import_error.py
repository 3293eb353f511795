"""Test-only: a backend module that fails to import a name from a package that exists."""
from dsport.backends.reference import no_such_kernel  # noqa: F401

NAME = "import_error"
OPS: dict = {}
