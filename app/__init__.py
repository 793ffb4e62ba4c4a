"""cxr-serve: the HTTP service (FastAPI) around the model store."""
