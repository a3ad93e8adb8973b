"""The `bramble` command line: a Typer app that speaks only HTTP to the v1 API."""
