"""A built-in emulator of the OpenAI Files, Batches and Images API, served over real HTTP.

Run it in-process with :class:`EmbeddedEmulator` (``with EmbeddedEmulator() as emu: emu.base_url``) or
standalone with ``batchpipe emulator serve``. Settings: :class:`EmulatorConfig` (speed, limits) and
:class:`FaultConfig` (faults on demand). See ``batchpipe/emulator/README.md``.
"""

from batchpipe.emulator.config import EmulatorConfig, FaultConfig, RouteFaults, SpeedConfig
from batchpipe.emulator.server import EmbeddedEmulator, EmulatorServer, run_server

__all__ = [
    "EmbeddedEmulator",
    "EmulatorConfig",
    "EmulatorServer",
    "FaultConfig",
    "RouteFaults",
    "SpeedConfig",
    "run_server",
]
