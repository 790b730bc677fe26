"""spokenlm's Ray Serve application (DESIGN.md §6): serve/app.py (HTTP ingress, routes, limits),
serve/deployments.py (batched Encoder and LLM deployments), serve/formats.py (response bodies),
serve/config.yaml (`serve run serve/config.yaml`). Importing the package imports nothing heavy."""


def serve_main(*args, **kwargs):
    """`spokenlm serve`: see serve.app.serve_main."""
    from serve.app import serve_main as main

    return main(*args, **kwargs)
