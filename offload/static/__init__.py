"""The static engine: answers GET and HEAD for files under the static root."""
