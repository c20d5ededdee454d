"""What the gateway tells its operators: Prometheus metrics (``metrics``), structured logs
(``logs``) and the OpenAPI additions (``openapi``)."""
