"""Fixtures every test directory can use."""

from tests.fakes import fake_openai as fake_openai
from tests.fakes.anthropic_server import fake_anthropic as fake_anthropic
from tests.fakes.tool_server import tool_server as tool_server
