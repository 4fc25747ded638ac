"""The HTTP front end: FastAPI app, routes, middleware and wire encodings."""
