"""The report tests' fixtures (tests/report/fixtures.py), for the tests in this folder only: other test
sessions do not import the report stack."""

from tests.report.fixtures import model_dir, site  # noqa: F401
