"""``python -m hf_pipeline.hub.server``: serve a local Hub until interrupted (see ``app.main``)."""

from hf_pipeline.hub.server.app import main

if __name__ == "__main__":
    main()
