"""The API's request and response shapes, as ``TypedDict``\\ s generated from the server's
``/openapi.json`` (see ``_generated.py``; regenerate with ``clients/python/generate-types``)."""

from ._generated import *  # noqa: F401,F403
