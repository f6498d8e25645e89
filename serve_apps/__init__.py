"""The online endpoint: the batch job's stage classes as Ray Serve deployments behind one FastAPI ingress."""
