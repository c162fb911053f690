"""Fixtures every test directory can use."""

from tests.fakes import fake_openai as fake_openai
