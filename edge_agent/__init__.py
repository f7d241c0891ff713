"""``edge_agent``: the device daemon (Raspberry Pi with systemd, or Greengrass v2).

Run it with ``edge-agent run --config agent.toml``; embed it with::

    config = load_config("agent.toml")
    agent = Agent(config)
    await agent.run()          # until agent.request_stop()

Telemetry plugins implement :class:`TelemetrySource` and register a factory
``(name, options) -> source`` in the ``edge_agent.sources`` entry-point group.
"""

from edge_agent._agent import Agent
from edge_agent._config import AgentConfig, load_config, parse_config
from edge_agent._errors import AlreadyRunningError, ConfigError, EdgeAgentError, IdentityError
from edge_agent._sources import ENTRY_POINT_GROUP, SourceError, TelemetrySource
from edge_agent._version import __version__

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentConfig",
    "AlreadyRunningError",
    "ConfigError",
    "EdgeAgentError",
    "IdentityError",
    "SourceError",
    "TelemetrySource",
    "__version__",
    "load_config",
    "parse_config",
]
