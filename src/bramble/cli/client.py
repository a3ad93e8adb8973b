"""HTTP access to the Bramble API: configuration, requests, uploads and errors.

Every failure on the wire becomes a `CliError` carrying one line of text, so commands never
wrap requests in their own try/except and the user never sees a traceback.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import typer
from pydantic import BaseModel, TypeAdapter, ValidationError

from bramble.api.schemas import ErrorResponse

DEFAULT_URL = "http://127.0.0.1:8470"
CHUNK_SIZE = 1024 * 1024
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Uploads and activation may keep the server busy (fsync, format probe) before it answers.
SLOW_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
COMPLETION_TIMEOUT = httpx.Timeout(2.0)

#: Test hook: when set, every Client without its own transport sends through this one.
default_transport: httpx.BaseTransport | None = None

M = TypeVar("M", bound=BaseModel)


class CliError(Exception):
    """A failure reported as ``error: <message>`` on one line of stderr, exit code 2."""


class ApiError(CliError):
    """The API answered with an error status; keeps the code so callers can react to it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Config:
    url: str
    token: str | None


def config_file(environ: Mapping[str, str]) -> Path:
    """The CLI's TOML file, honouring XDG_CONFIG_HOME (ignored unless absolute, per the spec)."""
    base = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(environ.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "bramble" / "cli.toml"


def _read_config_file(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path} is not valid TOML: {exc}") from None
    for key in ("url", "token"):
        if key in data and not isinstance(data[key], str):
            raise CliError(f"{path}: '{key}' must be a string")
    return {key: data[key] for key in ("url", "token") if data.get(key)}


def load_config(url: str | None = None, token: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Resolve URL and token: options, then BRAMBLE_URL/BRAMBLE_TOKEN, then cli.toml, then defaults."""
    env = os.environ if environ is None else environ
    url = url or env.get("BRAMBLE_URL") or None
    token = token or env.get("BRAMBLE_TOKEN") or None
    if url is None or token is None:  # only touch the file when it can matter
        stored = _read_config_file(config_file(env))
        url = url or stored.get("url")
        token = token or stored.get("token")
    url = (url or DEFAULT_URL).rstrip("/")
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"invalid API URL {url!r}: expected http(s)://HOST[:PORT]")
    return Config(url=url, token=token)


def seg(value: str) -> str:
    """Quote one path segment so a name can never reach another route."""
    return quote(value, safe="")


def _user_agent() -> str:
    try:
        return f"bramble-cli/{metadata.version('bramble')}"
    except metadata.PackageNotFoundError:
        return "bramble-cli"


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Client:
    """A thin synchronous client; methods return the decoded JSON body (None for 204)."""

    def __init__(
        self,
        config: Config,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.config = config
        self._http = httpx.Client(
            base_url=config.url,
            transport=transport or default_transport,
            timeout=timeout,
            headers={"User-Agent": _user_agent(), "Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

    def _auth(self) -> dict[str, str]:
        if not self.config.token:
            raise CliError(
                "no API token: run `make up` or set BRAMBLE_TOKEN (or put `token = ...` in ~/.config/bramble/cli.toml)"
            )
        return {"Authorization": f"Bearer {self.config.token}"}

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        content: Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        slow: bool = False,
    ) -> Any:
        all_headers = {**(self._auth() if auth else {}), **(headers or {})}
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=all_headers,
                timeout=SLOW_TIMEOUT if slow else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.ConnectError:
            raise CliError(
                f"the API at {self.config.url} is unreachable (is brambled running? try `make up`)"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"the API at {self.config.url} did not answer in time") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            raise CliError(f"request to {self.config.url} failed: {_one_line(str(exc))}") from None
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> Any:
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise CliError(
                    f"the API at {self.config.url} sent a reply that is not JSON (HTTP {response.status_code})"
                ) from None
        raise _api_error(response)

    def get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None, *, slow: bool = False) -> Any:
        return self.request("POST", path, json=json, slow=slow)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(self, path: str, file: Path, on_chunk: Callable[[int], None] = lambda _: None) -> Any:
        """PUT a file as a raw body, read lazily in CHUNK_SIZE pieces so size never costs memory.

        ``on_chunk`` hears each chunk's length once the transport has taken it (drives progress).
        """
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise CliError(f"cannot read {file}: {exc.strerror}") from None

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    yield chunk
                    on_chunk(len(chunk))

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            return self.request("PUT", path, content=chunks(), headers=headers, slow=True)
        except OSError as exc:  # raised by the generator while httpx pulls from it
            raise CliError(f"cannot read {file}: {exc.strerror or exc}") from None

    def download(
        self,
        path: str,
        write: Callable[[bytes], object],
        *,
        params: Mapping[str, str] | None = None,
        on_total: Callable[[int | None], None] = lambda _: None,
    ) -> int:
        """GET a raw body in chunks into ``write``; ``on_total`` hears Content-Length first."""
        written = 0
        try:
            with self._http.stream("GET", path, params=params, headers=self._auth(), timeout=SLOW_TIMEOUT) as response:
                if not response.is_success:
                    response.read()
                    raise _api_error(response)
                length = response.headers.get("content-length")
                on_total(int(length) if length and length.isdigit() else None)
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    write(chunk)
                    written += len(chunk)
        except httpx.ConnectError:
            raise CliError(
                f"the API at {self.config.url} is unreachable (is brambled running? try `make up`)"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"the API at {self.config.url} did not answer in time") from None
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise CliError(f"download from {self.config.url} failed: {_one_line(str(exc))}") from None
        return written


def _api_error(response: httpx.Response) -> ApiError:
    status = response.status_code
    try:
        body = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        text = _one_line(response.text, 200) or response.reason_phrase
        return ApiError(status, "http", f"HTTP {status} from the API: {text}")
    message = _one_line(body.message)
    if status == 401:
        message += " (check BRAMBLE_TOKEN or ~/.config/bramble/cli.toml)"
    elif status >= 500 and body.request_id:
        message += f" (request {body.request_id})"
    return ApiError(status, body.code, message)


def _first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or "value"
    info = model.model_fields.get(str(err["loc"][0])) if model and err["loc"] else None
    # Pattern errors are unreadable regexes; the schema's description says the rule in words.
    pattern = err["type"] == "string_pattern_mismatch"
    reason = info.description if pattern and info and info.description else err["msg"]
    if "input" in err and err["type"] != "missing":
        return f"invalid {field} {err['input']!r}: {reason}"
    return f"{field}: {reason}"


def parse(model: type[M], data: Any) -> M:
    """Validate a response body so renderers can trust its fields."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CliError(f"unexpected reply from the API: {_first_error(exc)}") from None


def parse_list(model: type[M], data: Any) -> list[M]:
    try:
        return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise CliError(f"unexpected reply from the API: {_first_error(exc)}") from None


def body(model: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """Build a request body, checked against the API schema so mistakes fail before any request.

    Only the given (non-None) fields are sent; the server fills its own defaults.
    """
    given = {key: value for key, value in fields.items() if value is not None}
    try:
        return model.model_validate(given).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        raise CliError(_first_error(exc, model)) from None


def client_from(ctx: typer.Context) -> Client:
    """The command's client, made once per invocation from the root --url/--token options."""
    root = ctx.find_root()
    client = root.meta.get("bramble.client")
    if not isinstance(client, Client):
        client = Client(load_config(root.params.get("url"), root.params.get("token")))
        root.meta["bramble.client"] = client
        root.call_on_close(client.close)
    return client


def name_completer(path: str) -> Callable[[typer.Context, str], list[str]]:
    """Shell completion of object names from GET ``path``; silent and empty on any failure."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        with contextlib.suppress(Exception):
            root = ctx.find_root()
            config = load_config(root.params.get("url"), root.params.get("token"))
            client = Client(config, timeout=COMPLETION_TIMEOUT)
            try:
                items = client.get(path)
            finally:
                client.close()
            names = [item["name"] for item in items if isinstance(item, dict)]
            return [name for name in names if isinstance(name, str) and name.startswith(incomplete)]
        return []

    return complete


complete_vms = name_completer("/v1/vms")
complete_images = name_completer("/v1/images")
complete_flavors = name_completer("/v1/flavors")
