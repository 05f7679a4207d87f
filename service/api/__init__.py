"""The HTTP API: the app and its routes (app), access and CORS middleware, request validation,
OpenAPI, errors and metrics. Serving imports nothing from offline or demo."""
