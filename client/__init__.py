"""The dizzy client: the ``dizzy`` CLI and the blocking Python API.

    from dizzy.client import Client
    oid = Client().put("results.parquet")
"""

from dizzy.protocol.errors import DizzyError

from ._client import Client, EventStream

__all__ = ["Client", "DizzyError", "EventStream"]
