"""offload: the front door of a pod. Serves static assets and streams everything else to the app.

>>> from offload import create_app
>>> app = create_app(static="public", upstream="localhost:3000", hooks=[my_hook])  # doctest: +SKIP
"""

from offload.app import create_app
from offload.config import Config, ConfigError, Upstream
from offload.facts import RequestFacts
from offload.version import __version__

__all__ = ["Config", "ConfigError", "RequestFacts", "Upstream", "__version__", "create_app"]
