"""Errors a user can act on. The API maps each kind to one HTTP status."""

from __future__ import annotations


class BrambleError(Exception):
    """Base of all errors with a message meant for the person who made the request."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BrambleError):
    code = "not_found"
    http_status = 404


class Conflict(BrambleError):
    code = "conflict"
    http_status = 409


class Invalid(BrambleError):
    code = "invalid"
    http_status = 422


class Unauthorized(BrambleError):
    code = "unauthorized"
    http_status = 401


class NoCapacity(BrambleError):
    """No node can take the request (scheduler said no)."""

    code = "no_capacity"
    http_status = 409


class Unavailable(BrambleError):
    """A backend the request needs (a Ceph cluster) did not answer in time; retry later."""

    code = "unavailable"
    http_status = 503


class ActionFailed(BrambleError):
    """A step on a node failed; what was done has been undone."""

    code = "action_failed"
    http_status = 500
