"""`vm create --cache/--no-cache`, the cache line of `vm show`, `vm cache drop`."""

from __future__ import annotations

import json

import httpx

from tests.unit.cli.conftest import error


def sent_json(fake_api, method: str, path: str) -> dict:
    request = next(r for r in fake_api.requests if r.method == method and r.url.path == path)
    return json.loads(request.content) if request.content else {}


def test_create_sends_the_cache_choice_only_when_given(fake_api, cli) -> None:
    sizes = ("--cpus", "1", "--memory", "1G", "--disk-size", "1")
    assert cli("vm", "create", "a", "-i", "debian", *sizes, "--cache").exit_code == 0
    assert sent_json(fake_api, "POST", "/v1/vms")["cache"] is True
    fake_api.requests.clear()
    assert cli("vm", "create", "b", "-i", "debian", *sizes, "--no-cache").exit_code == 0
    assert sent_json(fake_api, "POST", "/v1/vms")["cache"] is False
    fake_api.requests.clear()
    assert cli("vm", "create", "c", "-i", "debian", *sizes).exit_code == 0
    assert "cache" not in sent_json(fake_api, "POST", "/v1/vms")


def test_show_prints_cache_size_and_hit_ratio(fake_api, cli) -> None:
    vm = fake_api.add_vm("web")
    vm["cache"] = "on"
    vm["cache_stats"] = {
        "image_id": "img-x",
        "cache_bytes": 52 * 1024**2,
        "overlay_bytes": 4 * 1024**2,
        "image_cache_bytes": 48 * 1024**2,
        "ceph_read_bytes": 48 * 1024**2,
        "served_bytes": 480 * 1024**2,
        "hit_ratio": 0.9,
    }
    fake_api.hooks[r"GET /v1/vms/web"] = lambda request: httpx.Response(200, json=vm)
    result = cli("vm", "show", "web")
    assert result.exit_code == 0, result.output
    assert "hit ratio 0.90" in result.stdout and "from Ceph" in result.stdout
    vm["cache_stats"] = None
    assert "the node did not answer" in cli("vm", "show", "web").stdout
    vm["cache"] = "off"
    assert "hit ratio" not in cli("vm", "show", "web").stdout


def test_cache_drop_follows_the_operation_then_shows_the_vm(fake_api, cli) -> None:
    vm = fake_api.add_vm("web")
    vm["cache"] = "on"

    def drop(request: httpx.Request) -> httpx.Response:
        vm["cache"] = "off"
        return httpx.Response(202, json={"operation": fake_api.start_op("vm.cache_drop", "vm/web")})

    fake_api.hooks[r"POST /v1/vms/web/cache/drop"] = drop
    fake_api.hooks[r"GET /v1/vms/web"] = lambda request: httpx.Response(200, json=vm)
    result = cli("vm", "cache", "drop", "web")
    assert result.exit_code == 0, result.output
    assert "vm web" in result.stdout
    assert any(r.url.path.startswith("/v1/operations/") for r in fake_api.requests)


def test_cache_drop_of_an_uncached_vm_is_one_line(fake_api, cli, error_line) -> None:
    fake_api.hooks[r"POST /v1/vms/web/cache/drop"] = lambda request: error(
        409, "conflict", "VM 'web' has no cached disk (its disk is in its pool already)"
    )
    assert "no cached disk" in error_line(cli("vm", "cache", "drop", "web"))


def test_pool_create_sends_the_cache_settings(fake_api, cli, error_line) -> None:
    sent: list[dict] = []

    def create(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(
            201,
            json={
                **sent[-1],
                "id": "p1",
                "is_default": False,
                "created_at": "2026-11-21T00:00:00Z",
                "timeout_seconds": 15,
                "ceph_user": "bramble",
                "ceph_keyring": None,
                "path": None,
            },
        )

    fake_api.hooks[r"POST /v1/pools"] = create
    args = ("pool", "create", "fast", "-d", "rbd", "--ceph-conf", "/etc/ceph/ceph.conf", "--ceph-pool", "vms")
    result = cli(*args, "--cache", "on", "--precache-gib", "2")
    assert result.exit_code == 0, result.output
    assert sent[-1]["cache"] == "on" and sent[-1]["precache_gib"] == 2
    assert "on, pre-cache 2 GiB" in result.stdout
    assert "--cache must be on or off" in error_line(cli(*args, "--cache", "yes"))
