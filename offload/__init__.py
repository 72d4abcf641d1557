"""offload: the front door of a pod. Serves static assets and streams everything else to the app.

>>> from offload import Config, create_app
>>> app = create_app(Config(static=Path("public"), upstream="localhost:3000"))  # doctest: +SKIP
"""

from offload.app import create_app
from offload.config import Config, ConfigError, Upstream

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "Upstream", "__version__", "create_app"]
