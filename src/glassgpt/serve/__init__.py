"""`glassgpt serve`: one loaded run behind an OpenAI-compatible HTTP API and one static chat page.

    schema.py    a request body → a checked ChatRequest, or a RequestError naming the field
    workers.py   generation threads behind a bounded queue; tokens handed to the event loop
    app.py       the FastAPI app: /v1/chat/completions, /v1/models, /health, / (page.html)
    server.py    uvicorn around the app: bind, print one ready line, stop cleanly on Ctrl-C
    page.html    the chat page (vanilla JS, no external resources)

The API reference is docs/reference/api.md; how to use it, docs/how-to/serve.md.
"""

from glassgpt.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
