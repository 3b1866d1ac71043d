"""The server's routes, one module per resource (wired by ff_jax.serving.server.create_app)."""
