"""Running and shipping the app: uvicorn processes, Ray Serve, Docker and KubeRay files."""
