"""The proxy: streams every request the static engine does not answer to the app."""
