"""The gateway's HTTP routes, one module per API: ``openai`` (``/v1``), ``sdd`` (``/health``,
``/experts``, ``/route``, ``/generate``), ``admin`` (experts and adapters at run time), ``keys``
(``/admin/keys``, ``/admin/usage``, ``/metrics``), and ``fastpath``, the raw-ASGI front of every
generation request. Route modules never import each other; what they share lives in ``views``
or below the API layer (:mod:`forge_gateway.dispatch`, :mod:`forge_gateway.errors`).
"""
